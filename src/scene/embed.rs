//! XMP and IPTC carried from the photo into the files realfill writes (titles, keywords,
//! rights, captions). The `image` crate's encoders take an ICC profile and EXIF but not these,
//! so they are spliced into the encoded bytes where each format keeps them:
//!
//! | format | XMP | IPTC (as a Photoshop resource block, 8BIM 0x0404) |
//! |---|---|---|
//! | JPEG | APP1 `http://ns.adobe.com/xap/1.0/` | APP13 `Photoshop 3.0` |
//! | PNG | iTXt `XML:com.adobe.xmp` | tEXt `Raw profile type 8bim` (ImageMagick's and exiftool's convention) |
//! | WebP | `XMP ` chunk (VP8X flag set) | — (the format has no place for it) |
//! | TIFF | tag 700 | tag 33723 (the IPTC records themselves) |
//!
//! A block too large for its segment (64 KiB in JPEG) is left out rather than written
//! corrupt; [`unkept`] names what a format cannot hold so the caller can say so.

use image::ImageFormat;

/// The largest payload of one JPEG segment (its 16-bit length counts itself).
const JPEG_SEGMENT: usize = 65_533;
const XMP_JPEG: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
const IRB_JPEG: &[u8] = b"Photoshop 3.0\0";
const XMP_PNG: &str = "XML:com.adobe.xmp";
const IRB_PNG: &str = "Raw profile type 8bim";

/// What of `xmp` and `irb` the format cannot hold, in words ("XMP", "IPTC").
pub fn unkept(format: ImageFormat, xmp: Option<&[u8]>, irb: Option<&[u8]>) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (holds_xmp, holds_irb) = match format {
        ImageFormat::Jpeg => (
            xmp.is_none_or(|x| XMP_JPEG.len() + x.len() <= JPEG_SEGMENT),
            irb.is_none_or(|b| IRB_JPEG.len() + b.len() <= JPEG_SEGMENT),
        ),
        ImageFormat::Png => (xmp.is_none_or(|x| std::str::from_utf8(x).is_ok()), true),
        ImageFormat::WebP => (true, false),
        ImageFormat::Tiff => (true, irb.is_none_or(|b| iim_of(b).is_some())),
        _ => (false, false),
    };
    if xmp.is_some() && !holds_xmp {
        out.push("XMP");
    }
    if irb.is_some() && !holds_irb {
        out.push("IPTC");
    }
    out
}

/// `bytes` (a whole encoded file of `format`) with `xmp` and `irb` (a Photoshop image
/// resource block) added where the format keeps them; what it cannot hold is left out.
pub fn embed(format: ImageFormat, bytes: Vec<u8>, xmp: Option<&[u8]>, irb: Option<&[u8]>) -> Vec<u8> {
    if xmp.is_none() && irb.is_none() {
        return bytes;
    }
    match format {
        ImageFormat::Jpeg => jpeg(bytes, xmp, irb),
        ImageFormat::Png => png(bytes, xmp, irb),
        ImageFormat::WebP => webp(bytes, xmp),
        ImageFormat::Tiff => tiff(bytes, xmp, irb.and_then(iim_of).as_deref()).unwrap_or_else(|b| b),
        _ => bytes,
    }
}

/// The IPTC records of a resource block's 0x0404 resources (what TIFF's tag 33723 holds).
fn iim_of(irb: &[u8]) -> Option<Vec<u8>> {
    let out: Vec<u8> =
        resources(irb)?.into_iter().filter(|r| r.id == 0x0404).flat_map(|r| irb[r.data].to_vec()).collect();
    (!out.is_empty()).then_some(out)
}

/// A classic TIFF with XMP (tag 700) and IPTC records (tag 33723) added to its first image:
/// the directory is written again at the end of the file with the new entries in tag order
/// and the header pointed at it (the old directory stays, unreferenced). Err(bytes) when the
/// file is not one this can extend (BigTIFF, a damaged header).
fn tiff(mut bytes: Vec<u8>, xmp: Option<&[u8]>, iim: Option<&[u8]>) -> Result<Vec<u8>, Vec<u8>> {
    let le = match bytes.get(..4) {
        Some([b'I', b'I', 0x2a, 0]) => true,
        Some([b'M', b'M', 0, 0x2a]) => false,
        _ => return Err(bytes),
    };
    let u16_at = |b: &[u8], i: usize| -> Option<u16> {
        let v = b.get(i..i + 2)?.try_into().ok()?;
        Some(if le { u16::from_le_bytes(v) } else { u16::from_be_bytes(v) })
    };
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        let v = b.get(i..i + 4)?.try_into().ok()?;
        Some(if le { u32::from_le_bytes(v) } else { u32::from_be_bytes(v) })
    };
    let p16 = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
    let p32 = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
    let Some(ifd) = u32_at(&bytes, 4).map(|v| v as usize) else { return Err(bytes) };
    let Some(n) = u16_at(&bytes, ifd).map(|v| v as usize) else { return Err(bytes) };
    let Some(entries) = bytes.get(ifd + 2..ifd + 2 + 12 * n).map(|e| e.to_vec()) else { return Err(bytes) };
    let Some(next) = u32_at(&bytes, ifd + 2 + 12 * n) else { return Err(bytes) };
    let mut all: Vec<[u8; 12]> = entries.chunks_exact(12).map(|c| c.try_into().expect("12 bytes")).collect();
    // New values go after the file, each at an even offset; UNDEFINED (7) bytes.
    for (tag, data) in [(700u16, xmp), (33723, iim)] {
        let Some(data) = data else { continue };
        let tag_of =
            |e: &[u8; 12]| if le { u16::from_le_bytes([e[0], e[1]]) } else { u16::from_be_bytes([e[0], e[1]]) };
        all.retain(|e| tag_of(e) != tag);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut e = [0u8; 12];
        e[..2].copy_from_slice(&p16(tag));
        e[2..4].copy_from_slice(&p16(7));
        e[4..8].copy_from_slice(&p32(data.len() as u32));
        if data.len() <= 4 {
            e[8..8 + data.len()].copy_from_slice(data);
        } else {
            e[8..12].copy_from_slice(&p32(bytes.len() as u32));
            bytes.extend_from_slice(data);
        }
        all.push(e);
    }
    all.sort_by_key(|e| if le { u16::from_le_bytes([e[0], e[1]]) } else { u16::from_be_bytes([e[0], e[1]]) });
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let new_ifd = bytes.len();
    if new_ifd > u32::MAX as usize - 12 * all.len() - 6 {
        return Err(bytes);
    }
    bytes.extend_from_slice(&p16(all.len() as u16));
    for e in &all {
        bytes.extend_from_slice(e);
    }
    bytes.extend_from_slice(&p32(next));
    let head = p32(new_ifd as u32);
    bytes[4..8].copy_from_slice(&head);
    Ok(bytes)
}

fn jpeg(bytes: Vec<u8>, xmp: Option<&[u8]>, irb: Option<&[u8]>) -> Vec<u8> {
    if bytes.len() < 4 || bytes[..2] != [0xFF, 0xD8] {
        return bytes;
    }
    // After SOI and the APPn segments the encoder wrote (JFIF, EXIF, ICC).
    let mut at = 2;
    while at + 4 <= bytes.len() && bytes[at] == 0xFF && (0xE0..=0xEF).contains(&bytes[at + 1]) {
        at += 2 + u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
    }
    let at = at.min(bytes.len());
    let mut segments = Vec::new();
    for (marker, head, body) in [(0xE1u8, XMP_JPEG, xmp), (0xED, IRB_JPEG, irb)] {
        let Some(body) = body else { continue };
        let len = head.len() + body.len();
        if len > JPEG_SEGMENT {
            continue;
        }
        segments.extend_from_slice(&[0xFF, marker]);
        segments.extend_from_slice(&((len + 2) as u16).to_be_bytes());
        segments.extend_from_slice(head);
        segments.extend_from_slice(body);
    }
    let mut out = Vec::with_capacity(bytes.len() + segments.len());
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(&segments);
    out.extend_from_slice(&bytes[at..]);
    out
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(data.len() + 12);
    c.extend_from_slice(&(data.len() as u32).to_be_bytes());
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    c.extend_from_slice(&h.finalize().to_be_bytes());
    c
}

/// The text ImageMagick and exiftool write for a raw profile: a blank line, the profile's
/// name, its length, then its bytes in hex, 72 digits a line.
fn raw_profile(name: &str, data: &[u8]) -> String {
    let mut s = format!("\n{name}\n{:8}\n", data.len());
    for line in data.chunks(36) {
        for b in line {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('\n');
    }
    s
}

fn png(bytes: Vec<u8>, xmp: Option<&[u8]>, irb: Option<&[u8]>) -> Vec<u8> {
    const SIGNATURE: usize = 8;
    // Before the first IDAT (readers that stop at the image data still see them).
    let mut at = SIGNATURE;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if &bytes[at + 4..at + 8] == b"IDAT" {
            break;
        }
        at += 12 + len;
    }
    if at > bytes.len() {
        return bytes;
    }
    let mut chunks = Vec::new();
    if let Some(x) = xmp.and_then(|x| std::str::from_utf8(x).ok()) {
        // keyword, NUL, not compressed, method 0, no language, no translated keyword, text.
        let mut d = Vec::from(XMP_PNG.as_bytes());
        d.extend_from_slice(&[0, 0, 0, 0, 0]);
        d.extend_from_slice(x.as_bytes());
        chunks.extend(png_chunk(b"iTXt", &d));
    }
    if let Some(b) = irb {
        let mut d = Vec::from(IRB_PNG.as_bytes());
        d.push(0);
        d.extend_from_slice(raw_profile("8bim", b).as_bytes());
        chunks.extend(png_chunk(b"tEXt", &d));
    }
    let mut out = Vec::with_capacity(bytes.len() + chunks.len());
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(&chunks);
    out.extend_from_slice(&bytes[at..]);
    out
}

fn webp(bytes: Vec<u8>, xmp: Option<&[u8]>) -> Vec<u8> {
    let Some(xmp) = xmp else { return bytes };
    if bytes.len() < 20 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return bytes;
    }
    let mut body = bytes[12..].to_vec();
    match &body[..4] {
        b"VP8X" => body[8] |= 0x04,
        kind @ (b"VP8L" | b"VP8 ") => {
            // A simple file: the extended header that allows metadata chunks goes first.
            let Some((w, h, alpha)) = simple_webp_size(kind, &body[8..]) else { return bytes };
            let mut x = vec![if alpha { 0x10 | 0x04 } else { 0x04 }, 0, 0, 0];
            x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
            x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
            let mut head = Vec::from(&b"VP8X"[..]);
            head.extend_from_slice(&(x.len() as u32).to_le_bytes());
            head.extend_from_slice(&x);
            head.extend_from_slice(&body);
            body = head;
        }
        _ => return bytes,
    }
    body.extend_from_slice(b"XMP ");
    body.extend_from_slice(&(xmp.len() as u32).to_le_bytes());
    body.extend_from_slice(xmp);
    if xmp.len() % 2 == 1 {
        body.push(0);
    }
    let mut out = Vec::from(&b"RIFF"[..]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&body);
    out
}

/// Width, height and alpha of a simple (VP8L or VP8) WebP from its first chunk's data.
fn simple_webp_size(kind: &[u8], d: &[u8]) -> Option<(u32, u32, bool)> {
    if kind == b"VP8L" {
        // Signature 0x2f, then 14 bits width−1, 14 bits height−1, 1 bit alpha.
        if d.len() < 5 || d[0] != 0x2f {
            return None;
        }
        let v = u32::from_le_bytes([d[1], d[2], d[3], d[4]]);
        Some(((v & 0x3fff) + 1, ((v >> 14) & 0x3fff) + 1, (v >> 28) & 1 == 1))
    } else {
        // Frame tag (3 bytes), start code (3), then 14-bit width and height.
        if d.len() < 10 || d[3..6] != [0x9d, 0x01, 0x2a] {
            return None;
        }
        Some((
            (u16::from_le_bytes([d[6], d[7]]) & 0x3fff) as u32,
            (u16::from_le_bytes([d[8], d[9]]) & 0x3fff) as u32,
            false,
        ))
    }
}

/// A photo's IPTC as a Photoshop resource block, from what the `image` crate's decoder gave:
/// JPEG's APP13 is one already; PNG gives the text of a raw profile ("8bim": the block in hex;
/// "iptc": the IPTC records in hex, wrapped here as resource 0x0404).
pub fn irb_from_decoder(format: Option<ImageFormat>, data: Vec<u8>) -> Option<Vec<u8>> {
    let irb = match format {
        Some(ImageFormat::Jpeg) => Some(data),
        Some(ImageFormat::Png) => {
            let text = String::from_utf8(data).ok()?;
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            let name = lines.next()?.trim().to_ascii_lowercase();
            let len: usize = lines.next()?.trim().parse().ok()?;
            let hex: String = lines.flat_map(|l| l.trim().chars()).collect();
            if hex.len() < len.checked_mul(2)? {
                return None;
            }
            let bytes: Option<Vec<u8>> =
                (0..len).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
            let bytes = bytes?;
            match name.as_str() {
                "8bim" => Some(bytes),
                "iptc" => Some(iptc_resource(&bytes)),
                _ => None,
            }
        }
        _ => None,
    };
    iptc_only(&irb?)
}

/// One resource of a Photoshop image resource block: its id, where it lies whole (padding
/// included) and where its data lies.
struct Resource {
    id: u16,
    whole: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
}

/// The resources of a block ("8BIM", id, Pascal name padded to even, size, data padded to
/// even); None when one runs past the end.
fn resources(irb: &[u8]) -> Option<Vec<Resource>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= irb.len() && &irb[at..at + 4] == b"8BIM" {
        let id = u16::from_be_bytes([irb[at + 4], irb[at + 5]]);
        let name = 1 + irb[at + 6] as usize;
        let size_at = at + 6 + name + name % 2;
        let size = u32::from_be_bytes(irb.get(size_at..size_at + 4)?.try_into().ok()?) as usize;
        let data = size_at + 4..(size_at + 4).checked_add(size)?;
        if data.end > irb.len() {
            return None;
        }
        let whole = at..(data.end + size % 2).min(irb.len());
        at = data.end + size % 2;
        out.push(Resource { id, whole, data });
    }
    Some(out)
}

/// The IPTC resources (0x0404) of a Photoshop resource block, and nothing else: the block
/// may also hold a thumbnail of the photo before the fill (0x0409, 0x040C), which must not
/// travel into the filled file. None when it holds no IPTC or is damaged.
fn iptc_only(irb: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for r in resources(irb)?.into_iter().filter(|r| r.id == 0x0404) {
        out.extend_from_slice(&irb[r.whole.clone()]);
        // A last resource whose padding byte was cut off.
        if (r.whole.end - r.whole.start) % 2 == 1 {
            out.push(0);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The XMP packet with its orientation reset to "as stored", as the EXIF's is: the pixels are
/// written upright, and a reader that honours `tiff:Orientation` would turn them again.
pub fn xmp_upright(xmp: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(xmp) else { return xmp.to_vec() };
    static ORIENTATION: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = ORIENTATION.get_or_init(|| {
        regex::Regex::new(
            r#"(tiff:Orientation\s*=\s*["'])\s*\d+\s*(["'])|(<tiff:Orientation>)\s*\d+\s*(</tiff:Orientation>)"#,
        )
        .expect("a valid pattern")
    });
    re.replace_all(text, |c: &regex::Captures<'_>| match (c.get(1), c.get(3)) {
        (Some(a), _) => format!("{}1{}", a.as_str(), &c[2]),
        (None, Some(a)) => format!("{}1{}", a.as_str(), &c[4]),
        _ => c[0].to_string(),
    })
    .into_owned()
    .into_bytes()
}

/// IPTC records as Photoshop image resource 0x0404 (empty name, even padding).
fn iptc_resource(iptc: &[u8]) -> Vec<u8> {
    let mut r = Vec::from(&b"8BIM"[..]);
    r.extend_from_slice(&0x0404u16.to_be_bytes());
    r.extend_from_slice(&[0, 0]);
    r.extend_from_slice(&(iptc.len() as u32).to_be_bytes());
    r.extend_from_slice(iptc);
    if iptc.len() % 2 == 1 {
        r.push(0);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageDecoder;

    const XMP: &str = r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Garden wall</dc:title></rdf:Description></rdf:RDF></x:xmpmeta>"#;

    /// IPTC records: 2:05 title "Wall", 2:116 copyright "A. Photographer".
    fn iim() -> Vec<u8> {
        let mut v = Vec::new();
        for (tag, text) in [(5u8, "Wall"), (116, "A. Photographer")] {
            v.extend_from_slice(&[0x1c, 2, tag]);
            v.extend_from_slice(&(text.len() as u16).to_be_bytes());
            v.extend_from_slice(text.as_bytes());
        }
        v
    }

    fn encode(format: ImageFormat) -> Vec<u8> {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(9, 7, |x, y| {
            image::Rgb([x as u8 * 20, y as u8 * 30, 90])
        }));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    fn read_back(format: ImageFormat, bytes: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>, image::RgbImage) {
        let cursor = std::io::Cursor::new(bytes);
        let mut d: Box<dyn ImageDecoder> = match format {
            ImageFormat::Jpeg => Box::new(image::codecs::jpeg::JpegDecoder::new(cursor).unwrap()),
            ImageFormat::Png => Box::new(image::codecs::png::PngDecoder::new(cursor).unwrap()),
            _ => Box::new(image::codecs::webp::WebPDecoder::new(cursor).unwrap()),
        };
        let xmp = d.xmp_metadata().unwrap();
        let iptc = d.iptc_metadata().unwrap().and_then(|i| irb_from_decoder(Some(format), i));
        let img = image::DynamicImage::from_decoder(d).unwrap().to_rgb8();
        (xmp, iptc, img)
    }

    #[test]
    fn xmp_and_iptc_are_written_where_each_format_keeps_them_and_read_back() {
        let irb = iptc_resource(&iim());
        // TIFF: the image crate reads XMP back; the IPTC tag is checked by its bytes below.
        let tiff = embed(ImageFormat::Tiff, encode(ImageFormat::Tiff), Some(XMP.as_bytes()), Some(&irb));
        let mut d = image::codecs::tiff::TiffDecoder::new(std::io::Cursor::new(&tiff)).unwrap();
        assert_eq!(d.xmp_metadata().unwrap().as_deref(), Some(XMP.as_bytes()), "TIFF keeps the XMP");
        let pixels = image::DynamicImage::from_decoder(d).unwrap().to_rgb8();
        let plain = image::load_from_memory(&encode(ImageFormat::Tiff)).unwrap().to_rgb8();
        assert_eq!(pixels, plain, "TIFF: the image is unchanged");
        assert!(tiff.windows(iim().len()).any(|w| w == iim()), "TIFF holds the IPTC records");
        assert!(unkept(ImageFormat::Tiff, Some(b"x"), Some(&irb)).is_empty());
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
            let plain = encode(format);
            let (_, _, pixels) = read_back(format, &plain);
            let tagged = embed(format, plain, Some(XMP.as_bytes()), Some(&irb));
            let (xmp, iptc, again) = read_back(format, &tagged);
            assert_eq!(xmp.as_deref(), Some(XMP.as_bytes()), "{format:?} keeps the XMP");
            assert_eq!(again, pixels, "{format:?}: the image is unchanged");
            if format == ImageFormat::WebP {
                assert_eq!(unkept(format, Some(b"x"), Some(&irb)), ["IPTC"], "WebP has no place for IPTC");
            } else {
                assert_eq!(iptc.as_deref(), Some(&irb[..]), "{format:?} keeps the IPTC");
                assert!(unkept(format, Some(b"x"), Some(&irb)).is_empty());
            }
        }
    }

    #[test]
    fn a_block_too_large_for_a_jpeg_segment_is_left_out_and_named() {
        let big = vec![b'x'; 70_000];
        let bytes = embed(ImageFormat::Jpeg, encode(ImageFormat::Jpeg), Some(&big), None);
        let (xmp, _, _) = read_back(ImageFormat::Jpeg, &bytes);
        assert_eq!(xmp, None);
        assert_eq!(unkept(ImageFormat::Jpeg, Some(&big), None), ["XMP"]);
    }

    #[test]
    fn only_the_iptc_of_a_resource_block_travels_and_the_xmp_is_turned_upright() {
        // A thumbnail resource (0x040C, odd size, named) around the IPTC one.
        let mut irb = Vec::from(&b"8BIM\x04\x0c\x03abc\0\0\0\x03xyz\0"[..]);
        let iptc = iptc_resource(&iim());
        irb.extend_from_slice(&iptc);
        assert_eq!(iptc_only(&irb), Some(iptc.clone()));
        assert_eq!(irb_from_decoder(Some(ImageFormat::Jpeg), irb[..12].to_vec()), None, "damaged");
        assert_eq!(irb_from_decoder(Some(ImageFormat::Jpeg), b"8BIM\x04\x0c\0\0\0\0\0\0".to_vec()), None, "no IPTC");
        let x = br#"<rdf:Description tiff:Orientation="6"/><tiff:Orientation> 8 </tiff:Orientation>"#;
        assert_eq!(xmp_upright(x), br#"<rdf:Description tiff:Orientation="1"/><tiff:Orientation>1</tiff:Orientation>"#);
    }

    #[test]
    fn png_raw_iptc_profiles_become_resource_blocks() {
        let text = raw_profile("iptc", &iim());
        assert_eq!(irb_from_decoder(Some(ImageFormat::Png), text.into_bytes()), Some(iptc_resource(&iim())));
        assert_eq!(irb_from_decoder(Some(ImageFormat::Png), b"\n8bim\n  99\nzz\n".to_vec()), None, "damaged: left out");
        let huge = format!("\niptc\n{}\n00\n", usize::MAX);
        assert_eq!(irb_from_decoder(Some(ImageFormat::Png), huge.into_bytes()), None, "a length that overflows");
        assert_eq!(unkept(ImageFormat::Png, Some(&[0xff, 0xfe]), None), ["XMP"], "XMP that is not UTF-8");
    }
}
