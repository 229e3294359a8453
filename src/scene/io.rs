//! Reading photos and masks from disk (any format the `image` crate reads, EXIF orientation
//! honoured) and writing results atomically (temporary file + rename, so a failed save never
//! leaves a partial file and never touches the original).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, Pixel};

use super::colour::Metadata;
use super::raster::{Mask, RgbF};
use crate::error::{Error, Result};
use crate::input_file::{self, special_file_kind};
use crate::tempfiles;

/// Largest photo we accept, in pixels (a 12000×9000 photo is 108 MP). Above this the decoded
/// float copies alone would pass several GiB; the message says to downscale first.
pub const MAX_PIXELS: u64 = 120_000_000;

/// A decoded photo: the original pixels (for bit-exact compositing) and a float copy.
#[derive(Clone, Debug)]
pub struct Photo {
    pub path: PathBuf,
    /// Oriented original, 8-bit or 16-bit RGB depending on the source depth.
    pub original: DynamicImage,
    pub rgb: RgbF,
    /// Fully or mostly transparent pixels (alpha < 50%): they become part of the fill region.
    pub transparent: Option<Mask>,
    /// The file's ICC profile and EXIF (written back on export); `rgb` is in sRGB, `original`
    /// in this profile.
    pub metadata: Arc<Metadata>,
}

impl Photo {
    pub fn width(&self) -> usize {
        self.rgb.width
    }
    pub fn height(&self) -> usize {
        self.rgb.height
    }
}

fn decode(path: &Path) -> Result<(DynamicImage, Metadata)> {
    let mut file = input_file::open(path)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(Error::input(path, "file is empty (0 bytes); export the image again"));
    }
    const SUPPORTED: &str = "supported: PNG, JPEG, WebP, TIFF, BMP, GIF, PNM, TGA, QOI, HDR, ICO";
    // The format is guessed from the contents, else from the name. A name that promises a
    // format the contents do not start with means the file is not an image at all (TGA has
    // no signature, so it is exempt).
    let mut head = [0u8; 64];
    let n = read_head(&mut file, &mut head).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    let head = &head[..n];
    let sniffed = sniff_format(head);
    let named = image::ImageFormat::from_path(path).ok();
    let format = match (sniffed, named) {
        (Some(f), _) => f,
        (None, Some(f)) if f == image::ImageFormat::Tga => f,
        (None, Some(f)) => {
            return Err(Error::input(
                path,
                format!(
                    "not an image this build can read: the name says {} but the contents are not an image ({SUPPORTED})",
                    f.extensions_str().first().unwrap_or(&"?").to_uppercase()
                ),
            ));
        }
        (None, None) => return Err(Error::input(path, format!("not an image this build can read ({SUPPORTED})"))),
    };
    let rewind =
        |f: &mut fs::File| std::io::Seek::rewind(f).map_err(|e| Error::input(path, format!("cannot read: {e}")));
    let truncated =
        || Error::input(path, "JPEG file is truncated (it ends before its image data does); export the image again");
    let mut jpeg_in_scan = false;
    if format == image::ImageFormat::Jpeg {
        rewind(&mut file)?;
        match jpeg_end(std::io::BufReader::new(&mut file))
            .map_err(|e| Error::input(path, format!("cannot read: {e}")))?
        {
            JpegEnd::Complete => {}
            JpegEnd::InScan => jpeg_in_scan = true,
            JpegEnd::Cut => return Err(truncated()),
        }
    }
    rewind(&mut file)?;
    let mut reader = ImageReader::with_format(std::io::BufReader::new(file), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(alloc_limit(head, sniffed));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| describe_decode_error(path, e))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::input(path, "image has zero width or height"));
    }
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(Error::input(
            path,
            format!(
                "image is {w}×{h} ({:.0} MP), above realfill's limit of {} MP; downscale it first",
                w as f64 * h as f64 / 1e6,
                MAX_PIXELS / 1_000_000
            ),
        ));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    // A malformed metadata block is dropped, not an error: the pixels are what matters.
    let mut metadata = Metadata::new(decoder.icc_profile().ok().flatten(), decoder.exif_metadata().ok().flatten());
    metadata.xmp = decoder.xmp_metadata().ok().flatten();
    metadata.irb = decoder.iptc_metadata().ok().flatten().and_then(|d| super::embed::irb_from_decoder(Some(format), d));
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| describe_decode_error(path, e))?;
    if jpeg_in_scan && ends_in_flat_rows(&img) {
        return Err(truncated());
    }
    img.apply_orientation(orientation);
    Ok((img, metadata))
}

/// Up to `buf.len()` bytes from the start of `f`; how many.
fn read_head(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The format a file's first bytes say, BigTIFF included (the `image` crate's guess knows
/// classic TIFF only; its TIFF decoder reads both).
fn sniff_format(head: &[u8]) -> Option<image::ImageFormat> {
    image::guess_format(head)
        .ok()
        .or_else(|| (head.starts_with(b"II+\0") || head.starts_with(b"MM\0+")).then_some(image::ImageFormat::Tiff))
}

/// Where a JPEG file ends, as far as its structure says.
#[derive(Debug, PartialEq, Eq)]
enum JpegEnd {
    /// At its end-of-image marker.
    Complete,
    /// Inside its scan data, without an end-of-image marker: cut short, or only the last two
    /// bytes missing (some cameras and scanners write that); the decoded rows tell which.
    InScan,
    /// Before its scan data, or inside a segment: cut short.
    Cut,
}

/// Where a JPEG file ends. Segments are skipped by their lengths (an EXIF thumbnail's own
/// markers lie inside one), entropy-coded data is scanned up to the next marker; the file is
/// streamed, never held whole. (The decoder itself fills what is missing with grey and
/// reports nothing.)
fn jpeg_end(mut r: impl std::io::BufRead) -> std::io::Result<JpegEnd> {
    let mut next = || -> std::io::Result<Option<u8>> {
        let buf = r.fill_buf()?;
        let Some(&b) = buf.first() else { return Ok(None) };
        r.consume(1);
        Ok(Some(b))
    };
    // After the start-of-image marker.
    for _ in 0..2 {
        if next()?.is_none() {
            return Ok(JpegEnd::Cut);
        }
    }
    let mut pending: Option<u8> = None;
    loop {
        let marker = match pending.take() {
            Some(m) => m,
            // Bytes between segments are skipped, as decoders do.
            None => match marker_code(&mut next)? {
                Some(m) => m,
                None => return Ok(JpegEnd::Cut),
            },
        };
        match marker {
            0xD9 => return Ok(JpegEnd::Complete),
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {
                let (Some(hi), Some(lo)) = (next()?, next()?) else { return Ok(JpegEnd::Cut) };
                let len = u16::from_be_bytes([hi, lo]) as usize;
                for _ in 2..len {
                    if next()?.is_none() {
                        return Ok(JpegEnd::Cut);
                    }
                }
                if marker == 0xDA {
                    // Scan data: a 0xFF followed by 0 (a stuffed byte) or a restart is data.
                    loop {
                        match marker_code(&mut next)? {
                            None => return Ok(JpegEnd::InScan),
                            Some(0x00 | 0xD0..=0xD7) => continue,
                            Some(m) => {
                                pending = Some(m);
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The code of the next marker: bytes up to a 0xFF skipped, then fill bytes (0xFF); None at
/// the end of the file.
fn marker_code(next: &mut impl FnMut() -> std::io::Result<Option<u8>>) -> std::io::Result<Option<u8>> {
    let mut b = next()?;
    while b.is_some_and(|b| b != 0xFF) {
        b = next()?;
    }
    while b == Some(0xFF) {
        b = next()?;
    }
    Ok(b)
}

/// Whether a decoded image's last rows are one flat colour across the whole width: what the
/// decoder leaves where a cut JPEG's data stops (a photo's own last rows have texture).
fn ends_in_flat_rows(img: &DynamicImage) -> bool {
    use image::GenericImageView;
    let (w, h) = img.dimensions();
    let rows = 8.min(h);
    let first = img.get_pixel(0, h - 1);
    (h - rows..h).all(|y| (0..w).all(|x| img.get_pixel(x, y) == first))
}

/// What the decoder may allocate for a file starting with `head`: for a PNG, eight times its pixels' size (from the
/// header) and 64 MiB for metadata, so that a compressed metadata chunk (an ICC profile
/// inflating to gigabytes) cannot take more; for other formats, what the largest accepted
/// photo needs.
fn alloc_limit(head: &[u8], format: Option<image::ImageFormat>) -> u64 {
    const METADATA: u64 = 64 << 20;
    const LARGEST: u64 = MAX_PIXELS * 8 + METADATA;
    if format != Some(image::ImageFormat::Png) {
        return LARGEST;
    }
    // The file's first bytes (read once for the format): signature, then the IHDR chunk.
    if head.len() < 26 || &head[12..16] != b"IHDR" {
        return LARGEST;
    }
    let (w, h) =
        (u32::from_be_bytes(head[16..20].try_into().unwrap()), u32::from_be_bytes(head[20..24].try_into().unwrap()));
    // Channels by colour type (grey, RGB, palette, grey+alpha, RGBA), bytes per sample by depth.
    let channels: u64 = match head[25] {
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 1,
    };
    let bytes = (w as u64 * h as u64).saturating_mul(channels * if head[24] == 16 { 2 } else { 1 });
    // A palette or grey image may be expanded to RGB(A) by the decoder.
    bytes.saturating_mul(8).min(LARGEST).saturating_add(METADATA)
}

fn describe_decode_error(path: &Path, e: image::ImageError) -> Error {
    use image::ImageError::*;
    let problem = match &e {
        Unsupported(u) => format!("unsupported image variant ({u}); convert it to PNG or JPEG"),
        Limits(_) => "image too large to decode within memory limits; downscale it first".into(),
        Decoding(_) => format!("not a valid or complete image ({e}); the file may be truncated or corrupt"),
        IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "file is truncated; export the image again".into()
        }
        _ => format!("cannot decode: {e}"),
    };
    Error::input(path, problem)
}

/// Load a photo (target or reference).
pub fn load_photo(path: &Path) -> Result<Photo> {
    let (img, metadata) = decode(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let transparent = if img.color().has_alpha() {
        let rgba = img.to_rgba32f();
        let data: Vec<f32> = rgba.pixels().map(|p| if p[3] < 0.5 { 1.0 } else { 0.0 }).collect();
        let m = Mask { width: w, height: h, data };
        (!m.is_empty()).then_some(m)
    } else {
        None
    };
    Ok(Photo::from_image_with(path.to_path_buf(), img, transparent, Arc::new(metadata)))
}

impl Photo {
    /// A photo from decoded pixels (a file just read, or a fill result that lives only in
    /// memory until it is exported; `path` then names where it came from).
    pub fn from_image(path: PathBuf, img: DynamicImage, transparent: Option<Mask>) -> Photo {
        Photo::from_image_with(path, img, transparent, Arc::default())
    }

    /// The same, for pixels in the profile `metadata` names (converted to sRGB for `rgb`).
    pub fn from_image_with(
        path: PathBuf,
        img: DynamicImage,
        transparent: Option<Mask>,
        metadata: Arc<Metadata>,
    ) -> Photo {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let sixteen = matches!(
            img.color(),
            image::ColorType::L16
                | image::ColorType::La16
                | image::ColorType::Rgb16
                | image::ColorType::Rgba16
                | image::ColorType::Rgb32F
                | image::ColorType::Rgba32F
        );
        let original = match img {
            DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgb16(_) => img,
            _ if sixteen => DynamicImage::ImageRgb16(img.to_rgb16()),
            _ => DynamicImage::ImageRgb8(img.to_rgb8()),
        };
        let mut rgb = RgbF { width: w, height: h, data: original.to_rgb32f().into_raw() };
        if let Some(c) = &metadata.colour {
            c.to_srgb(&mut rgb);
        }
        Photo { path, original, rgb, transparent, metadata }
    }
}

/// The size a photo file says it has (its header only; before EXIF orientation), if it can be
/// read: to check a job against the memory budget before decoding anything.
pub fn image_size(path: &Path) -> Option<(usize, usize)> {
    let mut f = input_file::open(path).ok()?;
    let mut head = [0u8; 64];
    let n = read_head(&mut f, &mut head).ok()?;
    let format = sniff_format(&head[..n]).or_else(|| image::ImageFormat::from_path(path).ok())?;
    std::io::Seek::rewind(&mut f).ok()?;
    let (w, h) = ImageReader::with_format(std::io::BufReader::new(f), format).into_dimensions().ok()?;
    Some((w as usize, h as usize))
}

/// Load a reference photo, downscaled when its long side is above `long_side` (before its
/// float copy is made: a 24 MP reference of a small target costs what the engines use).
pub fn load_reference(path: &Path, long_side: usize) -> Result<Photo> {
    let (img, metadata) = decode(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let img = if w.max(h) > long_side {
        let s = long_side as f64 / w.max(h) as f64;
        let (nw, nh) = (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1));
        img.resize_exact(nw, nh, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    Ok(Photo::from_image_with(path.to_path_buf(), img, None, Arc::new(metadata)))
}

/// Load a mask: white (≥ 128 of 255, after converting to grey) = fill, black = keep.
/// Grey values are thresholded at 128; alpha, if any, is ignored.
/// A mask painted in a colour rather than white (nothing reaches grey 128, but some pixel has
/// a bright channel) is refused with a message saying so: pure red reads as grey 54.
pub fn load_mask(path: &Path) -> Result<Mask> {
    let (img, _) = decode(path)?;
    let l = img.to_luma8();
    let (w, h) = (l.width() as usize, l.height() as usize);
    let data: Vec<f32> = l.pixels().map(|p| if p[0] >= 128 { 1.0 } else { 0.0 }).collect();
    if !data.contains(&1.0) && img.color().has_color() {
        let rgb = img.to_rgb8();
        if let Some(p) = rgb.pixels().find(|p| p.0.iter().any(|&c| c >= 128)) {
            let grey = image::Rgb(p.0).to_luma().0[0];
            return Err(Error::input(
                path,
                format!(
                    "mask has nothing to fill: it is painted in colour (rgb {},{},{} reads as grey {grey}, and a mask fills where grey is 128 or more); paint the region to replace in white",
                    p.0[0], p.0[1], p.0[2]
                ),
            ));
        }
    }
    Ok(Mask { width: w, height: h, data })
}

/// Same file on disk? (Compares canonical paths; a path that does not exist yet is compared
/// through its canonical parent.)
pub fn same_file(a: &Path, b: &Path) -> bool {
    fn canon(p: &Path) -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = p.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    }
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The formats results can be written in, by file name extension.
pub const WRITABLE: &str = "PNG (.png), JPEG (.jpg), WebP (.webp), TIFF (.tif), BMP (.bmp), GIF (.gif), PNM (.ppm), \
                            TGA (.tga), QOI (.qoi), ICO (.ico)";

/// The format `path`'s extension names, if realfill writes it.
pub fn output_format(path: &Path) -> Result<image::ImageFormat> {
    use image::ImageFormat::*;
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    match image::ImageFormat::from_path(path) {
        Ok(f @ (Png | Jpeg | WebP | Tiff | Bmp | Gif | Pnm | Tga | Qoi | Ico)) => Ok(f),
        _ => Err(Error::output(
            path,
            match ext {
                Some(e) => format!("realfill does not write .{e} files; use one of {WRITABLE}"),
                None => format!("the name has no extension to say the format; use one of {WRITABLE}"),
            },
        )),
    }
}

/// Whether the format keeps 16 bits per channel (the others get the 8-bit version).
fn keeps_16_bits(f: image::ImageFormat) -> bool {
    matches!(f, image::ImageFormat::Png | image::ImageFormat::Tiff | image::ImageFormat::Pnm)
}

/// The largest width and height the format can hold and common readers open (libjpeg, which
/// most programs read JPEG through, refuses sides above 65,500 though the format's field
/// holds 65,535).
fn max_side(f: image::ImageFormat) -> u64 {
    use image::ImageFormat::*;
    match f {
        Ico => 256,
        WebP => 16383,
        Jpeg => 65500,
        Gif | Tga => 65535,
        _ => u32::MAX as u64,
    }
}

/// Whether a `width`×`height` result fits the format of `path`.
pub fn check_output_size(path: &Path, width: usize, height: usize) -> Result<()> {
    let f = output_format(path)?;
    let m = max_side(f);
    if width as u64 > m || height as u64 > m {
        let name = f.extensions_str().first().unwrap_or(&"?").to_uppercase();
        return Err(Error::output(
            path,
            format!("the result is {width}×{height}, and {name} holds at most {m}×{m}; choose PNG or TIFF"),
        ));
    }
    Ok(())
}

/// File names longer than this many bytes are refused by the usual file systems.
const NAME_MAX: usize = 255;

/// What is wrong with `path` as an output before any work starts: its format, its name's
/// length, what already exists there (only a regular file is replaced; a symbolic link is
/// written through: the file it points to gets the result), its folder. The path to write:
/// `path` itself, or the file its symbolic link points to.
pub fn check_output_path(path: &Path) -> Result<PathBuf> {
    // What is there first: a device named without an extension is refused as a device.
    let real = check_regular(path)?;
    output_format(path)?;
    let name = path.file_name().map(|n| n.len()).unwrap_or(0);
    if name + tempfiles::BESIDE_EXTRA > NAME_MAX {
        return Err(Error::output(
            path,
            format!(
                "the file name is {name} bytes long; file systems allow {NAME_MAX} (realfill needs {} of them for its temporary file); choose a shorter name",
                tempfiles::BESIDE_EXTRA
            ),
        ));
    }
    let dir = real.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::output(path, format!("folder {} does not exist; create it first", dir.display())));
    }
    Ok(real)
}

/// Only a regular file may be replaced: a device, FIFO, socket or folder at `path` is refused
/// (never replaced by a file), a symbolic link is followed (a dangling one is refused). The
/// path to write.
fn check_regular(path: &Path) -> Result<PathBuf> {
    let Ok(link) = fs::symlink_metadata(path) else { return Ok(path.to_path_buf()) };
    let real = if link.file_type().is_symlink() {
        fs::canonicalize(path).map_err(|_| {
            let to = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
            Error::output(
                path,
                format!("is a symbolic link to {to}, which does not exist; remove the link or choose another name"),
            )
        })?
    } else {
        path.to_path_buf()
    };
    let meta = fs::metadata(&real).map_err(|e| Error::output(path, format!("cannot look at it: {e}")))?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        if meta.permissions().readonly() {
            return Err(Error::output(
                path,
                "the file there is read-only (someone protected it); make it writable or choose another name",
            ));
        }
        return Ok(real);
    } else if t.is_dir() {
        "a folder; give a file name such as result.png".to_string()
    } else {
        match special_file_kind(&t) {
            Some(k) => format!("{k}, not a regular file; realfill writes only regular files"),
            None => "not a regular file; realfill writes only regular files".to_string(),
        }
    };
    Err(Error::output(path, format!("is {kind}")))
}

/// JPEG quality when none is chosen (the usual "high quality" of photo editors).
pub const JPEG_QUALITY: u8 = 95;

/// Encode `img` in the format the path's extension names and write it atomically: a temporary
/// file in the same folder, synced, then renamed over the target (through a symbolic link, to
/// the file it points to). Formats without 16-bit channels get the 8-bit version. No metadata;
/// JPEG at `JPEG_QUALITY`.
pub fn save_atomic(img: &DynamicImage, path: &Path) -> Result<()> {
    save_with(img, path, &Metadata::default(), JPEG_QUALITY)
}

/// The longest EXIF block one JPEG segment holds (65,533 bytes less its "Exif\0\0" header).
const JPEG_EXIF: usize = 65_527;

/// What of the photo's metadata a file at `path` will be written without, in words ("EXIF",
/// "XMP", "IPTC"): blocks realfill does not write into its format (WebP has no place for
/// IPTC; BMP, GIF and the rest for none), or too large for their segment.
pub fn metadata_left_out(path: &Path, meta: &Metadata) -> Vec<&'static str> {
    let Ok(format) = output_format(path) else { return Vec::new() };
    let mut out = Vec::new();
    let exif_fits = match format {
        image::ImageFormat::Jpeg => meta.exif.as_ref().is_none_or(|e| e.len() <= JPEG_EXIF),
        image::ImageFormat::Png | image::ImageFormat::WebP => true,
        _ => meta.exif.is_none(),
    };
    if !exif_fits {
        out.push("EXIF");
    }
    out.extend(super::embed::unkept(format, meta.xmp.as_deref(), meta.irb.as_deref()));
    out
}

/// `save_atomic`, keeping the source's ICC profile and EXIF (orientation reset: the pixels are
/// stored upright) where the format holds them — PNG, JPEG and WebP both, TIFF the profile —
/// its XMP and IPTC (`scene::embed`: JPEG and PNG both, WebP the XMP), and writing JPEG at
/// `jpeg_quality` (1–100). `metadata_left_out` says what a format cannot take.
pub fn save_with(img: &DynamicImage, path: &Path, meta: &Metadata, jpeg_quality: u8) -> Result<()> {
    use image::ImageEncoder;
    let real = check_output_path(path)?;
    let format = output_format(path)?;
    check_output_size(path, img.width() as usize, img.height() as usize)?;
    let img = if keeps_16_bits(format) {
        img.clone()
    } else if format == image::ImageFormat::Ico {
        // An icon's embedded PNG is 32-bit RGBA by the format's rules (readers refuse others).
        DynamicImage::ImageRgba8(img.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(img.to_rgb8())
    };
    let (icc, exif) = (meta.icc.clone(), meta.exif_upright());
    // Each encoder takes the metadata it can hold; one that refuses some is written without it.
    fn tag(e: &mut impl ImageEncoder, icc: Option<Vec<u8>>, exif: Option<Vec<u8>>) {
        if let Some(i) = icc {
            let _ = e.set_icc_profile(i);
        }
        if let Some(x) = exif {
            let _ = e.set_exif_metadata(x);
        }
    }
    let mut bytes = Vec::new();
    let encoded = match format {
        image::ImageFormat::Png => {
            let mut e = image::codecs::png::PngEncoder::new(&mut bytes);
            tag(&mut e, icc, exif);
            img.write_with_encoder(e)
        }
        image::ImageFormat::Jpeg => {
            let mut e = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, jpeg_quality.clamp(1, 100));
            // One segment's 16-bit length: a longer block would wrap it and corrupt the file.
            tag(&mut e, icc, exif.filter(|x| x.len() <= JPEG_EXIF));
            img.write_with_encoder(e)
        }
        image::ImageFormat::WebP => {
            let mut e = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
            tag(&mut e, icc, exif);
            img.write_with_encoder(e)
        }
        image::ImageFormat::Tiff => {
            let mut e = image::codecs::tiff::TiffEncoder::new(std::io::Cursor::new(&mut bytes));
            tag(&mut e, icc, None);
            img.write_with_encoder(e)
        }
        _ => img.write_to(&mut std::io::Cursor::new(&mut bytes), format),
    };
    encoded.map_err(|e| Error::output(path, format!("cannot encode as {format:?}: {e}")))?;
    let xmp = meta.xmp.as_deref().map(super::embed::xmp_upright);
    let bytes = super::embed::embed(format, bytes, xmp.as_deref(), meta.irb.as_deref());
    write_atomic(&real, &bytes)
}

/// Write bytes atomically (temporary file in the same folder, fsync, rename). Leftover
/// temporary files of this path from killed runs are removed first (`tempfiles`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let path = &check_regular(path)?;
    tempfiles::remove_stale(path);
    // The file replaced keeps its permission bits (a private 0600 file stays private; not
    // set-user/group-ID or sticky) and, where this process may, its owner and group (a file
    // of another account stays readable to it). Best effort: a folder that cannot take them
    // (FAT, some network shares) still gets the picture.
    let before = fs::metadata(path).ok();
    let result = (|| -> std::io::Result<()> {
        let (tmp, mut f) = tempfiles::Temp::beside(path)?;
        if let Some(m) = &before {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))
                .or_else(|_| std::os::unix::fs::fchown(&f, None, Some(m.gid())));
            let _ = f.set_permissions(fs::Permissions::from_mode(m.mode() & 0o777));
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        tmp.persist(path)
    })();
    if let Err(e) = result {
        let problem = match e.kind() {
            std::io::ErrorKind::PermissionDenied => "permission denied; choose a writable folder".to_string(),
            std::io::ErrorKind::StorageFull => "disk full; free some space".to_string(),
            _ => e.to_string(),
        };
        return Err(Error::output(path, problem));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("realfill-io-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A photo's XMP and IPTC survive a fill's export in every format that has a place for
    /// them, and the ones that have none are named.
    #[test]
    fn xmp_and_iptc_survive_export_where_the_format_holds_them() {
        let d = tmpdir("xmp");
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, 60])));
        let xmp = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>"#.to_vec();
        let irb = b"8BIM\x04\x04\0\0\0\0\0\x06\x1c\x02\x05\0\x01W".to_vec();
        let mut meta = Metadata::new(None, None);
        meta.xmp = Some(xmp.clone());
        meta.irb = Some(irb.clone());
        for (name, keeps_iptc) in [("o.jpg", true), ("o.png", true), ("o.webp", false)] {
            let p = d.join(name);
            save_with(&img, &p, &meta, 90).unwrap();
            let back = load_photo(&p).unwrap();
            assert_eq!(back.metadata.xmp.as_deref(), Some(&xmp[..]), "{name}");
            assert_eq!(back.metadata.irb.is_some(), keeps_iptc, "{name}");
            assert_eq!(metadata_left_out(&p, &meta).is_empty(), keeps_iptc, "{name}");
        }
        assert_eq!(back_irb(&d.join("o.png")), Some(irb));
        assert!(metadata_left_out(&d.join("o.tif"), &meta).is_empty(), "TIFF holds both");
        assert_eq!(metadata_left_out(&d.join("o.bmp"), &meta), ["XMP", "IPTC"]);
        // EXIF too long for one JPEG segment is left out, not written with a wrapped length.
        let meta = Metadata::new(None, Some(vec![0u8; 70_000]));
        assert_eq!(metadata_left_out(&d.join("big.jpg"), &meta), ["EXIF"]);
        save_with(&img, &d.join("big.jpg"), &meta, 90).unwrap();
        assert!(load_photo(&d.join("big.jpg")).is_ok(), "a readable JPEG");
    }

    fn back_irb(p: &Path) -> Option<Vec<u8>> {
        load_photo(p).ok()?.metadata.irb.clone()
    }

    #[test]
    fn png_roundtrip_and_mask_threshold() {
        let d = tmpdir("rt");
        let img = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        let p = d.join("a.png");
        save_atomic(&DynamicImage::ImageRgb8(img.clone()), &p).unwrap();
        let photo = load_photo(&p).unwrap();
        assert_eq!(photo.original.to_rgb8(), img);
        let m = image::GrayImage::from_fn(5, 4, |x, _| image::Luma([if x < 2 { 127 } else { 128 }]));
        let mp = d.join("m.png");
        m.save(&mp).unwrap();
        let mask = load_mask(&mp).unwrap();
        assert_eq!(mask.get(1, 0), 0.0);
        assert_eq!(mask.get(2, 0), 1.0);
        let names: Vec<String> =
            fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn exif_orientation_is_honoured() {
        let d = tmpdir("exif");
        // A 40×20 JPEG, left half white, then an EXIF block saying "rotate 90° clockwise".
        let img =
            image::RgbImage::from_fn(40, 20, |x, _| if x < 20 { image::Rgb([255; 3]) } else { image::Rgb([0; 3]) });
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        let mut app1 = vec![0xFF, 0xE1, 0x00, 34];
        app1.extend_from_slice(b"Exif\0\0MM\0\x2a\0\0\0\x08");
        app1.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
        let mut bytes = jpeg[..2].to_vec();
        bytes.extend_from_slice(&app1);
        bytes.extend_from_slice(&jpeg[2..]);
        let p = d.join("rotated.jpg");
        fs::write(&p, &bytes).unwrap();
        let photo = load_photo(&p).unwrap();
        assert_eq!((photo.width(), photo.height()), (20, 40), "rotated to portrait");
        // The white left half is now the top half.
        assert!(photo.rgb.get(10, 5)[0] > 0.8 && photo.rgb.get(10, 35)[0] < 0.2);
    }

    #[test]
    fn alpha_becomes_fill() {
        let d = tmpdir("alpha");
        let img = image::RgbaImage::from_fn(4, 4, |x, _| image::Rgba([9, 9, 9, if x == 0 { 0 } else { 255 }]));
        let p = d.join("t.png");
        img.save(&p).unwrap();
        let photo = load_photo(&p).unwrap();
        let t = photo.transparent.unwrap();
        assert_eq!(t.get(0, 2), 1.0);
        assert_eq!(t.get(1, 2), 0.0);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let d = tmpdir("bad");
        let missing = load_photo(&d.join("nope.png")).unwrap_err().to_string();
        assert!(missing.contains("nope.png") && missing.contains("not found"), "{missing}");
        let empty = d.join("empty.png");
        fs::write(&empty, b"").unwrap();
        assert!(load_photo(&empty).unwrap_err().to_string().contains("empty"));
        let text = d.join("notes.png");
        fs::write(&text, b"hello, this is not an image at all").unwrap();
        let e = load_photo(&text).unwrap_err().to_string();
        assert!(e.contains("notes.png"), "{e}");
    }

    #[test]
    fn save_into_missing_folder_fails_cleanly() {
        let d = tmpdir("missing");
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(2, 2));
        let e = save_atomic(&img, &d.join("no/such/dir/out.png")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn devices_are_refused_as_outputs_without_being_touched() {
        let e = check_output_path(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("a device") && e.contains("regular file"), "{e}");
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(2, 2));
        let e = save_atomic(&img, Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("a device"), "{e}");
        let meta = fs::metadata("/dev/null").unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()), "still a device");
    }

    #[test]
    fn every_writable_format_reads_back_and_only_those_are_accepted() {
        let d = tmpdir("formats");
        let img16 = DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(20, 12, |x, y| {
            image::Rgb([x as u16 * 3000, y as u16 * 5000, 40000])
        }));
        for ext in ["png", "jpg", "webp", "tif", "bmp", "gif", "ppm", "tga", "qoi", "ico"] {
            let p = d.join(format!("o.{ext}"));
            save_atomic(&img16, &p).unwrap_or_else(|e| panic!("{ext}: {e}"));
            let back = load_photo(&p).unwrap_or_else(|e| panic!("{ext}: {e}"));
            assert_eq!((back.width(), back.height()), (20, 12), "{ext}");
            let sixteen = matches!(back.original, DynamicImage::ImageRgb16(_));
            assert_eq!(
                sixteen,
                ["png", "tif", "ppm"].contains(&ext),
                "{ext}: 16 bits kept only where the format holds them"
            );
        }
        for bad in ["o.txt", "o", "o.avif", "o.exr", "o.hdr"] {
            let e = output_format(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("PNG (.png)"), "{bad}: {e}");
        }
        let e = check_output_size(Path::new("o.ico"), 257, 10).unwrap_err().to_string();
        assert!(e.contains("at most 256×256"), "{e}");
        assert!(check_output_size(Path::new("o.webp"), 16383, 100).is_ok());
        assert!(check_output_size(Path::new("o.webp"), 16384, 100).is_err());
        // libjpeg's limit, below the format's field.
        assert!(check_output_size(Path::new("o.jpg"), 65500, 8).is_ok());
        let e = check_output_size(Path::new("o.jpg"), 65535, 8).unwrap_err().to_string();
        assert!(e.contains("65500×65500"), "{e}");
    }

    #[test]
    fn a_truncated_jpeg_is_refused_and_a_complete_one_with_a_thumbnail_read() {
        let d = tmpdir("truncated");
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        // An APP1 segment holding a whole JPEG (as an EXIF thumbnail does): its end marker is
        // not the file's.
        let mut with_thumb = jpeg[..2].to_vec();
        with_thumb.extend_from_slice(&[0xFF, 0xE1]);
        with_thumb.extend_from_slice(&((jpeg.len() + 2) as u16).to_be_bytes());
        with_thumb.extend_from_slice(&jpeg);
        with_thumb.extend_from_slice(&jpeg[2..]);
        let p = d.join("whole.jpg");
        fs::write(&p, &with_thumb).unwrap();
        let whole = load_photo(&p).unwrap().original;
        // Only the end marker missing (some cameras write that): every row is there.
        fs::write(&p, &with_thumb[..with_thumb.len() - 2]).unwrap();
        let read = load_photo(&p).expect("a JPEG missing only its end marker is read").original;
        assert_eq!(read.to_rgb8(), whole.to_rgb8());
        for cut in [with_thumb.len() / 2 + jpeg.len() / 2, jpeg.len() + 10, 3] {
            fs::write(&p, &with_thumb[..cut]).unwrap();
            let e = load_photo(&p).unwrap_err().to_string();
            assert!(e.contains("whole.jpg") && e.contains("truncated"), "cut at {cut}: {e}");
        }
    }

    /// A 4×2 grey BigTIFF, one uncompressed strip after the directory (every value inline).
    fn bigtiff() -> Vec<u8> {
        let entries: [(u16, u16, u64); 8] = [
            (256, 3, 4),
            (257, 3, 2),
            (258, 3, 8),
            (259, 3, 1),
            (262, 3, 1),
            (273, 16, 16 + 8 + 20 * 8 + 8),
            (278, 3, 2),
            (279, 16, 8),
        ];
        let mut b = b"II+\0".to_vec();
        b.extend_from_slice(&[8, 0, 0, 0]);
        b.extend_from_slice(&16u64.to_le_bytes());
        b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (tag, typ, value) in entries {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&typ.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&value.to_le_bytes());
        }
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend((0..8u8).map(|i| i * 30));
        b
    }

    #[test]
    fn bigtiff_is_read() {
        let d = tmpdir("bigtiff");
        for name in ["big.tif", "big.data"] {
            let p = d.join(name);
            fs::write(&p, bigtiff()).unwrap();
            let photo = load_photo(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((photo.width(), photo.height()), (4, 2));
            assert_eq!(photo.original.to_rgb8().get_pixel(1, 0).0, [30; 3]);
            assert_eq!(image_size(&p), Some((4, 2)), "{name}");
        }
    }

    #[test]
    fn a_read_only_output_is_refused_and_a_replaced_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmpdir("modes");
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(2, 2));
        let ro = d.join("ro.png");
        fs::write(&ro, b"mine").unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
        let e = save_atomic(&img, &ro).unwrap_err().to_string();
        assert!(e.contains("ro.png") && e.contains("read-only"), "{e}");
        assert_eq!(fs::read(&ro).unwrap(), b"mine");
        let private = d.join("private.png");
        fs::write(&private, b"old").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        save_atomic(&img, &private).unwrap();
        assert_eq!(fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(load_photo(&private).is_ok());
        // A set-user-ID bit is not carried onto the new picture.
        let suid = d.join("suid.png");
        fs::write(&suid, b"old").unwrap();
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
        save_atomic(&img, &suid).unwrap();
        assert_eq!(fs::metadata(&suid).unwrap().permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn large_references_are_downscaled_as_they_load() {
        let d = tmpdir("refsize");
        let p = d.join("big.png");
        image::RgbImage::from_fn(3000, 2000, |x, y| image::Rgb([x as u8, y as u8, 9])).save(&p).unwrap();
        let r = load_reference(&p, 1024).unwrap();
        assert_eq!((r.width(), r.height()), (1024, 683));
        assert_eq!(image_size(&p), Some((3000, 2000)));
        let r = load_reference(&p, 4000).unwrap();
        assert_eq!((r.width(), r.height()), (3000, 2000), "not upscaled");
    }
}
