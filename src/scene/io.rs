//! Reading photos and masks from disk (any format the `image` crate reads, EXIF orientation
//! honoured) and writing results atomically (temporary file + rename, so a failed save never
//! leaves a partial file and never touches the original).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use super::raster::{Mask, RgbF};
use crate::error::{Error, Result};

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
}

impl Photo {
    pub fn width(&self) -> usize {
        self.rgb.width
    }
    pub fn height(&self) -> usize {
        self.rgb.height
    }
}

fn decode(path: &Path) -> Result<DynamicImage> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::input(path, "file not found; check the path"),
        std::io::ErrorKind::PermissionDenied => Error::input(path, "permission denied; make the file readable"),
        _ => Error::input(path, format!("cannot read: {e}")),
    })?;
    if meta.is_dir() {
        return Err(Error::input(path, "is a folder, not an image file"));
    }
    if meta.len() == 0 {
        return Err(Error::input(path, "file is empty (0 bytes); export the image again"));
    }
    let reader = ImageReader::open(path)
        .map_err(|e| Error::input(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    const SUPPORTED: &str = "supported: PNG, JPEG, WebP, TIFF, BMP, GIF, PNM, TGA, QOI, HDR, ICO";
    // The format is guessed from the contents, else from the name. A name that promises a
    // format the contents do not start with means the file is not an image at all (TGA has
    // no signature, so it is exempt).
    let sniffed = {
        let mut head = [0u8; 64];
        let n = fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
        image::guess_format(&head[..n]).ok()
    };
    match (reader.format(), sniffed) {
        (None, _) => return Err(Error::input(path, format!("not an image this build can read ({SUPPORTED})"))),
        (Some(f), None) if f != image::ImageFormat::Tga => {
            return Err(Error::input(
                path,
                format!(
                    "not an image this build can read: the name says {} but the contents are not an image ({SUPPORTED})",
                    f.extensions_str().first().unwrap_or(&"?").to_uppercase()
                ),
            ));
        }
        _ => {}
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_alloc = Some(4 << 30);
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
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| describe_decode_error(path, e))?;
    img.apply_orientation(orientation);
    Ok(img)
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
    let img = decode(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let transparent = if img.color().has_alpha() {
        let rgba = img.to_rgba32f();
        let data: Vec<f32> = rgba.pixels().map(|p| if p[3] < 0.5 { 1.0 } else { 0.0 }).collect();
        let m = Mask { width: w, height: h, data };
        (!m.is_empty()).then_some(m)
    } else {
        None
    };
    Ok(Photo::from_image(path.to_path_buf(), img, transparent))
}

impl Photo {
    /// A photo from decoded pixels (a file just read, or a fill result that lives only in
    /// memory until it is exported; `path` then names where it came from).
    pub fn from_image(path: PathBuf, img: DynamicImage, transparent: Option<Mask>) -> Photo {
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
        let rgb = RgbF { width: w, height: h, data: original.to_rgb32f().into_raw() };
        Photo { path, original, rgb, transparent }
    }
}

/// Load a mask: white (≥ 128 of 255, after converting to grey) = fill, black = keep.
/// Grey values are thresholded at 128; alpha, if any, is ignored.
pub fn load_mask(path: &Path) -> Result<Mask> {
    let img = decode(path)?;
    let l = img.to_luma8();
    let (w, h) = (l.width() as usize, l.height() as usize);
    let data = l.pixels().map(|p| if p[0] >= 128 { 1.0 } else { 0.0 }).collect();
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

/// Encode `img` in the format the path's extension names (PNG when unknown) and write it
/// atomically: a temporary file in the same folder, synced, then renamed over the target.
pub fn save_atomic(img: &DynamicImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path).unwrap_or(image::ImageFormat::Png);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::output(path, format!("folder {} does not exist; create it first", dir.display())));
    }
    let mut bytes = Vec::new();
    let img = if format == image::ImageFormat::Jpeg { DynamicImage::ImageRgb8(img.to_rgb8()) } else { img.clone() };
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .map_err(|e| Error::output(path, format!("cannot encode as {format:?}: {e}")))?;
    write_atomic(path, &bytes)
}

/// Write bytes atomically (temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::output(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
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
        assert!(!d.join(".a.png.tmp-".to_string() + &std::process::id().to_string()).exists());
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
}
