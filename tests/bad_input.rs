//! Everything a user can get wrong, one row each: through the command line (exit code, the
//! message names the file and the problem, no output written, inputs untouched) and, where
//! the engine is the one to notice, through the engine API. The app's dialogs that report
//! these are tested in tests/app.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realfill"))
}

/// A fresh folder with a small scene: target 80×56, a hole, one reference shifted by 5 px.
struct Scene {
    dir: PathBuf,
    target: PathBuf,
    mask: PathBuf,
    reference: PathBuf,
}

fn pattern(x: u32, y: u32, dx: u32) -> image::Rgb<u8> {
    let u = x + dx;
    let c = ((u / 6 + y / 6) % 2) as u8;
    image::Rgb([40 + 150 * c, (u * 3 % 200) as u8 + 30, (y * 4 % 200) as u8 + 20])
}

fn scene(name: &str) -> Scene {
    let dir = std::env::temp_dir().join(format!("realfill-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let s = Scene { target: dir.join("target.png"), mask: dir.join("mask.png"), reference: dir.join("ref.png"), dir };
    image::RgbImage::from_fn(80, 56, |x, y| pattern(x, y, 0)).save(&s.target).unwrap();
    image::RgbImage::from_fn(80, 56, |x, y| pattern(x, y, 5)).save(&s.reference).unwrap();
    image::GrayImage::from_fn(80, 56, |x, y| {
        image::Luma([if (28..52).contains(&x) && (20..36).contains(&y) { 255 } else { 0 }])
    })
    .save(&s.mask)
    .unwrap();
    s
}

/// What a row expects.
enum Expect {
    /// Fails; stderr names these (all of them) and no output file appears.
    Error(&'static [&'static str]),
    /// Succeeds; stderr has these warnings (all of them), the output exists.
    Ok(&'static [&'static str]),
}

struct Row {
    name: &'static str,
    /// Prepares files in the scene folder and returns the arguments after `fill`.
    setup: fn(&Scene) -> Vec<String>,
    expect: Expect,
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `--target T --mask M --ref R --out O` with the scene's files, overridable.
fn args(s: &Scene, target: &Path, mask: Option<&Path>, refs: &[&Path], out: &Path) -> Vec<String> {
    let mut a = vec!["--target".to_string(), p(target)];
    if let Some(m) = mask {
        a.extend(["--mask".to_string(), p(m)]);
    }
    for r in refs {
        a.extend(["--ref".to_string(), p(r)]);
    }
    a.extend(["--out".to_string(), p(out)]);
    let _ = s;
    a
}

fn std_args(s: &Scene) -> Vec<String> {
    args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("out.png"))
}

fn with_target(s: &Scene, target: PathBuf) -> Vec<String> {
    args(s, &target, None, &[&s.reference], &s.dir.join("out.png"))
        .into_iter()
        .chain(["--extend".into(), "0,0,8,0".into()])
        .collect()
}

fn write(s: &Scene, name: &str, bytes: &[u8]) -> PathBuf {
    let f = s.dir.join(name);
    std::fs::write(&f, bytes).unwrap();
    f
}

/// `img` as a BigTIFF (RGB, one uncompressed strip after the directory).
fn bigtiff(img: &image::RgbImage) -> Vec<u8> {
    let (w, h) = (img.width() as u64, img.height() as u64);
    // (tag, type: 3 SHORT, 4 LONG, 16 LONG8; count; value), each value inline (8 bytes).
    let entries: [(u16, u16, u64, u64); 9] = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 3, 0x0008_0008_0008), // bits per sample: 8, 8, 8
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 16, 1, 16 + 8 + 20 * 9 + 8),
        (277, 3, 1, 3),
        (278, 4, 1, h),
        (279, 16, 1, w * h * 3),
    ];
    let mut b = b"II+\0".to_vec();
    b.extend_from_slice(&8u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&16u64.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (tag, typ, count, value) in entries {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&typ.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&value.to_le_bytes());
    }
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(img.as_raw());
    b
}

/// PNG's chunk checksum.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A zlib stream that inflates to `n` zero bytes, written by hand (one fixed-Huffman block:
/// a literal zero, then copies of 258 bytes at distance 1, 13 bits each).
fn zlib_zeros(n: usize) -> Vec<u8> {
    struct Bits(Vec<u8>, u32, u32);
    impl Bits {
        fn put(&mut self, value: u32, len: u32) {
            for i in 0..len {
                self.1 |= ((value >> i) & 1) << self.2;
                self.2 += 1;
                if self.2 == 8 {
                    self.0.push(self.1 as u8);
                    (self.1, self.2) = (0, 0);
                }
            }
        }
        /// A Huffman code: most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            for i in (0..len).rev() {
                self.put((code >> i) & 1, 1);
            }
        }
    }
    let mut b = Bits(vec![0x78, 0x01], 0, 0);
    b.put(1, 1); // last block
    b.put(1, 2); // fixed Huffman codes
    let (copies, rest) = ((n - 1) / 258, (n - 1) % 258);
    b.code(0x30, 8); // literal 0
    for _ in 0..copies {
        b.code(0xC5, 8); // length 258 (symbol 285)
        b.code(0, 5); // distance 1
    }
    for _ in 0..rest {
        b.code(0x30, 8);
    }
    b.code(0, 7); // end of block
    let mut out = b.0;
    if b.2 > 0 {
        out.push(b.1 as u8);
    }
    // Adler-32 of n zeros: a = 1, b = n (mod 65521).
    out.extend(((((n % 65521) as u32) << 16) | 1).to_be_bytes());
    out
}

/// A PNG header (signature + IHDR with a correct CRC) claiming `w`×`h`, and nothing else.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(w.to_be_bytes());
    chunk.extend(h.to_be_bytes());
    chunk.extend([8, 2, 0, 0, 0]);
    v.extend(13u32.to_be_bytes());
    v.extend(&chunk);
    v.extend(crc32(&chunk).to_be_bytes());
    // An IDAT chunk (so that a decoder reads the header and reaches the pixels) and IEND.
    for (kind, data) in [(&b"IDAT"[..], &b"\x78\x9c\x03\x00\x00\x00\x00\x01"[..]), (&b"IEND"[..], &b""[..])] {
        let mut c = kind.to_vec();
        c.extend(data);
        v.extend((data.len() as u32).to_be_bytes());
        v.extend(&c);
        v.extend(crc32(&c).to_be_bytes());
    }
    v
}

/// A JPEG of `img` with an EXIF block saying "rotate 90° clockwise to display" (orientation 6).
fn jpeg_rotated(img: &image::RgbImage) -> Vec<u8> {
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 95).encode_image(img).unwrap();
    // TIFF header (little endian), one IFD entry: Orientation (0x0112), SHORT, 1, value 6.
    let mut tiff = b"II*\x00\x08\x00\x00\x00".to_vec();
    tiff.extend([1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend(tiff);
    let mut out = jpg[..2].to_vec(); // SOI
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpg[2..]);
    out
}

fn rows() -> Vec<Row> {
    vec![
        // --- target, reference and mask files ---
        Row {
            name: "missing target",
            setup: |s| with_target(s, s.dir.join("nope.png")),
            expect: Expect::Error(&["nope.png", "file not found"]),
        },
        Row {
            name: "empty file",
            setup: |s| with_target(s, write(s, "empty.png", b"")),
            expect: Expect::Error(&["empty.png", "file is empty (0 bytes)"]),
        },
        Row {
            name: "truncated PNG",
            setup: |s| {
                let bytes = std::fs::read(&s.target).unwrap();
                with_target(s, write(s, "cut.png", &bytes[..bytes.len() / 2]))
            },
            expect: Expect::Error(&["cut.png", "truncated"]),
        },
        // --- issue 32: files that are not what they say, outputs others cannot read ---
        Row {
            name: "truncated JPEG",
            setup: |s| {
                let mut jpeg = Vec::new();
                image::open(&s.target)
                    .unwrap()
                    .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
                    .unwrap();
                with_target(s, write(s, "half.jpg", &jpeg[..jpeg.len() / 2]))
            },
            expect: Expect::Error(&["half.jpg", "truncated"]),
        },
        Row {
            name: "target a FIFO",
            setup: |s| {
                let f = s.dir.join("pipe.png");
                mkfifo(&f);
                with_target(s, f)
            },
            expect: Expect::Error(&["pipe.png", "named pipe (FIFO)"]),
        },
        Row {
            name: "BigTIFF target",
            setup: |s| {
                let img = image::open(&s.target).unwrap().to_rgb8();
                with_target(s, write(s, "big.tif", &bigtiff(&img)))
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "read-only output",
            setup: |s| {
                use std::os::unix::fs::PermissionsExt;
                let out = write(s, "out.png", b"kept");
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o444)).unwrap();
                std_args(s)
            },
            expect: Expect::Error(&["out.png", "read-only"]),
        },
        Row {
            name: "JPEG wider than readers open",
            setup: |s| {
                let wide = s.dir.join("wide.png");
                image::RgbImage::from_fn(65_501, 4, |x, y| pattern(x, y, 0)).save(&wide).unwrap();
                args(s, &wide, None, &[&s.reference], &s.dir.join("out.jpg"))
                    .into_iter()
                    .chain(["--extend".into(), "0,0,0,4".into()])
                    .collect()
            },
            expect: Expect::Error(&["out.jpg", "holds at most 65500×65500"]),
        },
        Row {
            name: "not an image",
            setup: |s| with_target(s, write(s, "notes.png", b"these are my holiday notes, not a photo")),
            expect: Expect::Error(&["notes.png", "not an image this build can read"]),
        },
        Row {
            name: "unsupported format (OpenEXR)",
            setup: |s| with_target(s, write(s, "render.exr", b"\x76\x2f\x31\x01\x02\x00\x00\x00channels\x00")),
            expect: Expect::Error(&["render.exr"]),
        },
        Row {
            name: "folder instead of a file",
            setup: |s| with_target(s, s.dir.clone()),
            expect: Expect::Error(&["is a folder, not a file"]),
        },
        Row {
            name: "zero-sized image",
            setup: |s| with_target(s, write(s, "zero.png", &png_header(0, 16))),
            expect: Expect::Error(&["zero.png"]),
        },
        Row {
            name: "enormous image (above the documented limit)",
            setup: |s| with_target(s, write(s, "huge.png", &png_header(20_000, 15_000))),
            expect: Expect::Error(&["huge.png", "20000×15000", "above realfill's limit of 120 MP", "downscale"]),
        },
        Row {
            name: "16-bit target",
            setup: |s| {
                let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(80, 56, |x, y| {
                    let c = pattern(x, y, 0);
                    image::Rgb([c[0] as u16 * 257, c[1] as u16 * 257, c[2] as u16 * 257])
                });
                let f = s.dir.join("deep.png");
                img.save(&f).unwrap();
                args(s, &f, Some(&s.mask), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "greyscale target",
            setup: |s| {
                let f = s.dir.join("grey.png");
                image::open(&s.target).unwrap().to_luma8().save(&f).unwrap();
                args(s, &f, Some(&s.mask), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "target with transparent pixels",
            setup: |s| {
                let img = image::RgbaImage::from_fn(80, 56, |x, y| {
                    let c = pattern(x, y, 0);
                    image::Rgba([c[0], c[1], c[2], if x < 10 { 0 } else { 255 }])
                });
                let f = s.dir.join("alpha.png");
                img.save(&f).unwrap();
                args(s, &f, None, &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Ok(&["alpha.png", "transparent pixels are treated as part of the fill region"]),
        },
        Row {
            name: "CMYK JPEG",
            setup: |s| {
                let f = s.dir.join("cmyk.jpg");
                std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk.jpg"), &f).unwrap();
                with_target(s, f)
            },
            expect: Expect::Ok(&[]),
        },
        // --- mask ---
        Row {
            name: "mask of another size",
            setup: |s| {
                let m = s.dir.join("small-mask.png");
                image::GrayImage::new(10, 10).save(&m).unwrap();
                args(s, &s.target, Some(&m), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Error(&["small-mask.png", "10×10", "80×56", "must have the target's size"]),
        },
        Row {
            name: "empty mask",
            setup: |s| {
                let m = s.dir.join("black.png");
                image::GrayImage::new(80, 56).save(&m).unwrap();
                args(s, &s.target, Some(&m), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Error(&["black.png", "nothing to fill"]),
        },
        Row {
            name: "mask covering everything",
            setup: |s| {
                let m = s.dir.join("white.png");
                image::GrayImage::from_pixel(80, 56, image::Luma([255])).save(&m).unwrap();
                args(s, &s.target, Some(&m), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "no target and no mask",
            setup: |s| args(s, &s.target, None, &[&s.reference], &s.dir.join("out.png")),
            expect: Expect::Error(&["nothing to fill", "--mask", "--extend"]),
        },
        // --- references ---
        Row {
            name: "no references",
            setup: |s| args(s, &s.target, Some(&s.mask), &[], &s.dir.join("out.png")),
            expect: Expect::Ok(&["no reference photos"]),
        },
        Row {
            name: "references of very different sizes and shapes",
            setup: |s| {
                let (a, b) = (s.dir.join("wide.png"), s.dir.join("tall.png"));
                image::RgbImage::from_fn(300, 40, |x, y| pattern(x, y, 2)).save(&a).unwrap();
                image::RgbImage::from_fn(20, 200, |x, y| pattern(x, y, 9)).save(&b).unwrap();
                args(s, &s.target, Some(&s.mask), &[&a, &b], &s.dir.join("out.png"))
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "a reference given twice",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference, &s.reference], &s.dir.join("out.png")),
            expect: Expect::Ok(&["ref.png", "given twice"]),
        },
        Row {
            name: "the target as a reference",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.target, &s.reference], &s.dir.join("out.png")),
            expect: Expect::Ok(&["target.png", "is the target itself"]),
        },
        Row {
            name: "a reference that is not an image",
            setup: |s| {
                let r = write(s, "ref-notes.jpg", b"not a jpeg");
                args(s, &s.target, Some(&s.mask), &[&r], &s.dir.join("out.png"))
            },
            expect: Expect::Error(&["ref-notes.jpg"]),
        },
        // --- output ---
        Row {
            name: "output over the target",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.target),
            expect: Expect::Error(&["target.png", "one of the inputs", "another --out"]),
        },
        Row {
            name: "output over the mask",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.mask),
            expect: Expect::Error(&["mask.png", "one of the inputs"]),
        },
        Row {
            name: "output over a reference",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.reference),
            expect: Expect::Error(&["ref.png", "one of the inputs"]),
        },
        Row {
            name: "output in a folder that does not exist",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("no/such/dir/out.png")),
            expect: Expect::Error(&["no/such/dir/out.png", "does not exist"]),
        },
        Row {
            name: "output is a folder",
            setup: |s| {
                std::fs::create_dir_all(s.dir.join("out.png")).unwrap();
                args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Error(&["out.png", "is a folder"]),
        },
        // --- hostile input and limits (issue 16) ---
        Row {
            name: "output is a named pipe",
            setup: |s| {
                let fifo = s.dir.join("pipe.png");
                assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
                args(s, &s.target, Some(&s.mask), &[&s.reference], &fifo)
            },
            expect: Expect::Error(&["pipe.png", "named pipe", "regular file"]),
        },
        Row {
            name: "output is a socket",
            setup: |s| {
                let sock = s.dir.join("sock.png");
                std::mem::forget(std::os::unix::net::UnixListener::bind(&sock).unwrap());
                args(s, &s.target, Some(&s.mask), &[&s.reference], &sock)
            },
            expect: Expect::Error(&["sock.png", "socket", "regular file"]),
        },
        Row {
            name: "output is a dangling symbolic link",
            setup: |s| {
                let link = s.dir.join("link.png");
                std::os::unix::fs::symlink(s.dir.join("gone/nothing.png"), &link).unwrap();
                args(s, &s.target, Some(&s.mask), &[&s.reference], &link)
            },
            expect: Expect::Error(&["link.png", "symbolic link", "does not exist"]),
        },
        Row {
            name: "output with an unknown extension",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("out.txt")),
            expect: Expect::Error(&["out.txt", "does not write .txt", "PNG (.png)"]),
        },
        Row {
            name: "output without an extension",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("out")),
            expect: Expect::Error(&["out", "no extension", "PNG (.png)"]),
        },
        Row {
            name: "output in a format this build cannot write (AVIF)",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("out.avif")),
            expect: Expect::Error(&["out.avif", "does not write .avif"]),
        },
        Row {
            name: "output in a format this build cannot write (OpenEXR)",
            setup: |s| args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("out.exr")),
            expect: Expect::Error(&["out.exr", "does not write .exr"]),
        },
        Row {
            name: "ICO output wider than 256 pixels",
            setup: |s| {
                let mut a = args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("out.ico"));
                a.extend(["--extend".into(), "0,0,200,0".into()]);
                a
            },
            expect: Expect::Error(&["out.ico", "280×56", "at most 256×256"]),
        },
        Row {
            name: "GIF output from a 16-bit target",
            setup: |s| {
                let t16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(80, 56, |x, y| {
                    let p = pattern(x, y, 0).0;
                    image::Rgb(p.map(|c| c as u16 * 257))
                });
                let f = s.dir.join("t16.png");
                t16.save(&f).unwrap();
                args(s, &f, Some(&s.mask), &[&s.reference], &s.dir.join("out.gif"))
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "output name longer than file systems allow",
            setup: |s| {
                args(s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join(format!("{}.png", "n".repeat(296))))
            },
            expect: Expect::Error(&["300 bytes long", "shorter name"]),
        },
        Row {
            name: "a leftover temporary file of a killed run is removed",
            setup: |s| {
                // Written by a process that no longer runs (above the kernel's pid_max).
                write(s, ".out.png.tmp-4194400", b"half a png");
                std_args(s)
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "an extension whose canvas is above the pixel limit",
            setup: |s| {
                let mut a = std_args(s);
                a.extend(["--extend".into(), "20000,20000,20000,20000".into()]);
                a
            },
            expect: Expect::Error(&["40080×40056", "limit of 120 MP", "extend it less"]),
        },
        Row {
            name: "a negative extension",
            setup: |s| {
                let mut a = std_args(s);
                a.extend(["--extend".into(), "-10,0,0,0".into()]);
                a
            },
            expect: Expect::Error(&["-10,0,0,0", "cannot be negative"]),
        },
        Row {
            name: "a mask turned by its EXIF orientation",
            setup: |s| {
                let m = image::RgbImage::from_fn(80, 56, |x, y| {
                    image::Rgb([if (28..52).contains(&x) && (20..36).contains(&y) { 255 } else { 0 }; 3])
                });
                let f = write(s, "mask-rotated.jpg", &jpeg_rotated(&m));
                args(s, &s.target, Some(&f), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Error(&["mask-rotated.jpg", "turned by 90°", "EXIF orientation"]),
        },
        Row {
            name: "a mask painted red instead of white",
            setup: |s| {
                let m = image::RgbImage::from_fn(80, 56, |x, y| {
                    image::Rgb(if (28..52).contains(&x) && (20..36).contains(&y) { [255, 0, 0] } else { [0, 0, 0] })
                });
                let f = s.dir.join("mask-red.png");
                m.save(&f).unwrap();
                args(s, &s.target, Some(&f), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Error(&["mask-red.png", "painted in colour", "in white"]),
        },
        Row {
            name: "a device as a reference",
            setup: |s| args(s, &s.target, Some(&s.mask), &[Path::new("/dev/zero")], &s.dir.join("out.png")),
            expect: Expect::Error(&["/dev/zero", "is a device", "not a regular file"]),
        },
        Row {
            name: "a PNG whose ICC profile inflates to 256 MiB",
            setup: |s| {
                let f = s.dir.join("icc-bomb.png");
                std::fs::write(&f, icc_bomb(&std::fs::read(&s.target).unwrap(), 256 << 20)).unwrap();
                args(s, &f, Some(&s.mask), &[&s.reference], &s.dir.join("out.png"))
            },
            expect: Expect::Ok(&[]),
        },
        Row {
            name: "a learning crop far above any image",
            setup: |s| {
                let mut a = std_args(s);
                a.extend(["--crop".into(), "1000000".into()]);
                a
            },
            expect: Expect::Error(&["--crop 1000000", "16 to 512"]),
        },
        Row {
            name: "a learning batch of 2^64 − 1",
            setup: |s| {
                let mut a = std_args(s);
                a.extend(["--batch".into(), "18446744073709551615".into()]);
                a
            },
            expect: Expect::Error(&["--batch 18446744073709551615", "1 to 64"]),
        },
    ]
}

/// `png` (a PNG file) with an iCCP chunk after its header whose profile inflates to `size`
/// bytes of zeros (compressed, a thousandth of that).
fn icc_bomb(png: &[u8], size: usize) -> Vec<u8> {
    use std::io::Write;
    let mut z = zlib_zeros(size);
    let mut data = b"icc\0\0".to_vec();
    data.append(&mut z);
    let mut chunk = b"iCCP".to_vec();
    chunk.extend(&data);
    let mut out = png[..33].to_vec(); // signature and IHDR
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(&chunk);
    out.extend(crc32(&chunk).to_be_bytes());
    out.write_all(&png[33..]).unwrap();
    out
}

#[test]
fn every_mistake_gets_one_clear_message_and_nothing_is_lost() {
    let mut failures = Vec::new();
    for (i, row) in rows().into_iter().enumerate() {
        let s = scene(&format!("row{i}"));
        let a = (row.setup)(&s);
        let out = PathBuf::from(&a[a.iter().position(|x| x == "--out").unwrap() + 1]);
        let inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&s.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Leftover temporary files are not inputs: they must go (checked below).
            .filter(|p| p.is_file() && !p.to_string_lossy().contains(".tmp-"))
            .map(|p| {
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        let o = bin()
            .env("REALFILL_CACHE", s.dir.join("cache"))
            .arg("fill")
            .args(&a)
            .args(["--engine", "patch", "--size", "80", "--backend", "cpu"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let mut problems = Vec::new();
        if err.contains("panicked") {
            problems.push("panicked".to_string());
        }
        match row.expect {
            Expect::Error(words) => {
                if o.status.success() {
                    problems.push("succeeded".into());
                }
                let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or("");
                for w in words {
                    if !line.contains(w) {
                        problems.push(format!("error line lacks {w:?}"));
                    }
                }
                if out.is_file() && !inputs.iter().any(|(p, _)| *p == out) {
                    problems.push("wrote an output".into());
                }
            }
            Expect::Ok(words) => {
                if !o.status.success() {
                    problems.push("failed".into());
                }
                for w in words {
                    if !err.lines().any(|l| l.starts_with("warning: ") && l.contains(w)) {
                        problems.push(format!("no warning with {w:?}"));
                    }
                }
                if !out.is_file() {
                    problems.push("no output".into());
                }
            }
        }
        for (p, b) in &inputs {
            if std::fs::read(p).ok().as_ref() != Some(b) {
                problems.push(format!("input {} changed", p.display()));
            }
        }
        let leftovers: Vec<_> = std::fs::read_dir(&s.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.contains(".tmp-"))
            .collect();
        if !leftovers.is_empty() {
            problems.push(format!("temporary files left: {leftovers:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {} — stderr: {err}", row.name, problems.join(", ")));
        }
        let _ = std::fs::remove_dir_all(&s.dir);
    }
    assert!(failures.is_empty(), "{} of the rows failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn exif_orientation_is_honoured() {
    let s = scene("exif");
    // Stored 40 wide × 24 high; displayed rotated: 24 wide × 40 high.
    let stored = image::RgbImage::from_fn(40, 24, |x, y| pattern(x, y, 0));
    let f = write(&s, "rotated.jpg", &jpeg_rotated(&stored));
    let photo = realfill::scene::io::load_photo(&f).unwrap();
    assert_eq!((photo.width(), photo.height()), (24, 40));
    let out = s.dir.join("out.png");
    let o = bin()
        .arg("fill")
        .args(args(&s, &f, None, &[&s.reference], &out))
        .args(["--extend", "4,4,4,4", "--engine", "patch", "--size", "64", "--backend", "cpu", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        image::open(&out).unwrap().to_rgb8().dimensions(),
        (32, 48),
        "the output keeps the displayed orientation"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn sixteen_bit_targets_stay_sixteen_bit() {
    let s = scene("deep");
    let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(80, 56, |x, y| {
        let c = pattern(x, y, 0);
        image::Rgb([c[0] as u16 * 257 + 3, c[1] as u16 * 257, c[2] as u16 * 257])
    });
    let f = s.dir.join("deep.png");
    img.save(&f).unwrap();
    let out = s.dir.join("out.png");
    let o = bin()
        .arg("fill")
        .args(args(&s, &f, Some(&s.mask), &[&s.reference], &out))
        .args(["--engine", "patch", "--size", "80", "--backend", "cpu", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let res = image::open(&out).unwrap();
    assert_eq!(res.color(), image::ColorType::Rgb16);
    // A known pixel far from the hole is bit-exact, low bits included.
    assert_eq!(res.to_rgb16().get_pixel(2, 2), img.get_pixel(2, 2));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn grey_masks_are_thresholded_at_128() {
    let s = scene("grey-mask");
    let m = s.dir.join("grey.png");
    image::GrayImage::from_fn(4, 1, |x, _| image::Luma([[0, 127, 128, 255][x as usize]])).save(&m).unwrap();
    let mask = realfill::scene::io::load_mask(&m).unwrap();
    assert_eq!(mask.data, vec![0.0, 0.0, 1.0, 1.0]);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn without_a_gpu_wgpu_falls_back_to_the_cpu_with_a_message() {
    let s = scene("nogpu");
    let out = s.dir.join("out.png");
    // WGPU_BACKEND names a backend this machine cannot have (Metal on Linux): no adapter.
    let o = bin()
        .env("WGPU_BACKEND", "metal")
        .arg("fill")
        .args(std_args(&s))
        .args(["--engine", "patch", "--size", "80", "--backend", "wgpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: no wgpu adapter found; using the CPU backend"), "{err}");
    assert!(out.is_file());
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_fill_killed_midway_leaves_no_output_and_the_inputs_intact() {
    let s = scene("killed");
    let out = s.dir.join("out.png");
    let before = std::fs::read(&s.target).unwrap();
    // The scene model from scratch with many steps: still learning when killed.
    let mut child = bin()
        .env("REALFILL_CACHE", s.dir.join("cache"))
        .arg("fill")
        .args(std_args(&s))
        .args(["--engine", "scene", "--size", "80", "--backend", "cpu", "--learn-steps", "100000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once it reports its working size (learning starts next and runs for minutes), not
    // after a fixed sleep: on a loaded machine a sleep may end before the fill has begun.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let started = std::io::BufRead::lines(stderr).map_while(|l| l.ok()).any(|l| l.contains("working size"));
    assert!(started, "the fill reported its working size");
    child.kill().unwrap();
    let _ = child.wait();
    assert!(!out.exists(), "no output");
    assert_eq!(std::fs::read(&s.target).unwrap(), before);
    let _ = std::fs::remove_dir_all(&s.dir);
}

// --- the engine API ---

#[test]
fn the_engine_survives_a_job_that_panics() {
    use realfill::engine::{BackendChoice, Engine, Event, FillSettings, Job};
    let s = scene("panic");
    let target = realfill::scene::io::load_photo(&s.target).unwrap();
    let mask = realfill::scene::io::load_mask(&s.mask).unwrap();
    let sc = std::sync::Arc::new(
        realfill::scene::Scene::new(target, Some((mask, &s.mask)), Default::default(), vec![]).unwrap(),
    );
    let engine = Engine::start(BackendChoice::Cpu);
    // A network whose first level has no channels cannot be built: the job panics inside
    // the worker (burn refuses the layer).
    let mut bad =
        FillSettings { engine: realfill::settings::EngineKind::SceneModel, use_cache: false, ..Default::default() };
    bad.spec.channels = vec![0, 16];
    bad.size = 80;
    engine.submit(Job::Learn { scene: sc.clone(), settings: bad });
    let failed = loop {
        match engine.events().recv().unwrap() {
            Event::Failed(m) => break m,
            Event::Learned { .. } | Event::Done(_) => panic!("a broken job succeeded"),
            _ => {}
        }
    };
    assert!(failed.contains("internal error in the engine"), "{failed}");
    // The worker still serves the next job.
    let good = FillSettings {
        engine: realfill::settings::EngineKind::Patch,
        size: 80,
        use_cache: false,
        ..Default::default()
    };
    engine.submit(Job::Fill { scene: sc, settings: good, candidates: 1 });
    loop {
        match engine.events().recv().unwrap() {
            Event::Done(out) => {
                assert_eq!(out.image.width(), 80);
                break;
            }
            Event::Failed(m) => panic!("{m}"),
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_full_disk_leaves_no_partial_file() {
    let s = scene("full");
    // A larger photo so that the result (≈ 0.5 MB) cannot fit in a 64 KiB file system.
    let noisy = |x: u32, y: u32, dx: u32| {
        let h = (x + dx).wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503);
        image::Rgb([(h >> 3) as u8, (h >> 11) as u8, (h >> 19) as u8])
    };
    image::RgbImage::from_fn(400, 300, |x, y| noisy(x, y, 0)).save(&s.target).unwrap();
    image::RgbImage::from_fn(400, 300, |x, y| noisy(x, y, 3)).save(&s.reference).unwrap();
    let full = s.dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&full).status();
    if !mounted.is_ok_and(|m| m.success()) {
        // Mounting needs privileges this machine may not grant; the rename-failure test below
        // covers the clean-up path without them.
        eprintln!("skipped: cannot mount a small tmpfs here");
        return;
    }
    let out = full.join("out.png");
    let o = bin()
        .arg("fill")
        .args(args(&s, &s.target, None, &[&s.reference], &out))
        .args(["--extend", "0,0,16,0", "--engine", "patch", "--size", "64", "--backend", "cpu", "--quiet"])
        .output()
        .unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&full).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    let _ = Command::new("umount").arg(&full).status();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("out.png") && err.contains("disk full"), "{err}");
    assert!(leftovers.is_empty(), "nothing left on the full disk: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_failed_save_removes_its_temporary_file_and_keeps_what_was_there() {
    let s = scene("rename");
    // The destination is a non-empty folder: writing the temporary file works, the rename
    // over it fails.
    let dest = s.dir.join("taken.png");
    std::fs::create_dir_all(dest.join("inside")).unwrap();
    let img = image::open(&s.target).unwrap();
    let e = realfill::scene::io::save_atomic(&img, &dest).unwrap_err().to_string();
    assert!(e.contains("taken.png"), "{e}");
    assert!(dest.join("inside").is_dir(), "what was there is untouched");
    let names: Vec<String> = std::fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "temporary file removed: {names:?}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_malformed_measuring_switch_is_named_before_any_work() {
    let s = scene("switch");
    let out = s.dir.join("out.png");
    for (var, value, says) in [
        ("REALFILL_PROFILE", "maybe", "REALFILL_PROFILE=\"maybe\": give 1 to switch it on or 0"),
        ("REALFILL_PATCH", "{patch:7", "REALFILL_PATCH=\"{patch:7\": not JSON"),
    ] {
        let o = bin().env(var, value).arg("fill").args(std_args(&s)).args(["--backend", "cpu"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{var}: {err}");
        assert!(!out.exists());
    }
    // A well-formed override naming a field the patch engine does not have fails the fill.
    let o = bin()
        .env("REALFILL_PATCH", r#"{"pach":7}"#)
        .arg("fill")
        .args(std_args(&s))
        .args(["--engine", "patch", "--size", "80", "--backend", "cpu", "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("REALFILL_PATCH: unknown field \"pach\""), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&s.dir);
}

// --- hostile input and limits (issue 16): what the table's harness cannot express ---

/// Run `realfill ARGS` with the cache in the scene's folder; (success, stderr).
fn run(s: &Scene, args: &[String], env: &[(&str, &str)]) -> (bool, String) {
    let (ok, _, err) = run_code(s, args, env);
    (ok, err)
}

/// `run`, with the exit code (None: killed by a signal, as an abort is).
fn run_code(s: &Scene, args: &[String], env: &[(&str, &str)]) -> (bool, Option<i32>, String) {
    let mut c = bin();
    c.env("REALFILL_CACHE", s.dir.join("cache")).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (o.status.success(), o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn mkfifo(p: &Path) {
    assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_symbolic_link_as_output_is_written_through_and_stays_a_link() {
    let s = scene("symlink");
    let real = s.dir.join("real.png");
    std::fs::write(&real, b"old").unwrap();
    let link = s.dir.join("link.png");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut a = strings(&["fill", "--engine", "patch", "--size", "80", "--backend", "cpu", "--quiet"]);
    a.extend(args(&s, &s.target, Some(&s.mask), &[&s.reference], &link));
    let (ok, err) = run(&s, &a, &[]);
    assert!(ok, "{err}");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is still a link");
    let img = image::open(&real).expect("the file it points to holds the result");
    assert_eq!((img.width(), img.height()), (80, 56));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn output_problems_are_found_before_any_work() {
    // The scene model with a learning run of minutes: a refusal after the work had started
    // would show "working size" (and take minutes).
    let s = scene("early");
    let long = format!("{}.png", "n".repeat(296));
    for (out, extra, says) in [
        ("out.avif", "0,0,0,0", "does not write .avif"),
        ("out.exr", "0,0,0,0", "does not write .exr"),
        ("out.ico", "0,0,200,0", "at most 256×256"),
        (long.as_str(), "0,0,0,0", "300 bytes long"),
    ] {
        let mut a = strings(&["fill", "--engine", "scene", "--learn-steps", "100000", "--backend", "cpu"]);
        a.extend(args(&s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join(out)));
        a.extend(["--extend".into(), extra.into()]);
        let (ok, err) = run(&s, &a, &[]);
        assert!(!ok && err.contains(says), "{out}: {err}");
        assert!(!err.contains("working size"), "{out}: refused only after the work began: {err}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn jobs_above_the_memory_budget_are_refused_with_what_to_lower() {
    let s = scene("budget");
    let budget = [("REALFILL_MEMORY_GIB", "0.5")];
    // Learning at the largest batch and crop.
    let mut a = strings(&["learn", "--batch", "64", "--crop", "512", "--size", "512", "--backend", "cpu"]);
    a.extend(args(&s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("x.png"))[..6].to_vec());
    let (ok, err) = run(&s, &a, &budget);
    assert!(!ok && err.contains("memory budget of 0.5 GiB") && err.contains("lower --batch or --crop"), "{err}");
    // A canvas extended to 100 MP.
    let mut a = strings(&["fill", "--engine", "patch", "--backend", "cpu", "--extend", "5000,5000,5000,5000"]);
    a.extend(std_args(&s));
    let (ok, err) = run(&s, &a, &budget);
    assert!(!ok && err.contains("extend the canvas less"), "{err}");
    assert!(!s.dir.join("out.png").exists());
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_cache_that_cannot_be_written_is_a_warning_and_old_leftovers_go() {
    let s = scene("cache");
    let mut a =
        strings(&["learn", "--learn-steps", "2", "--batch", "1", "--crop", "16", "--size", "64", "--backend", "cpu"]);
    a.extend(args(&s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("x.png"))[..6].to_vec());
    // REALFILL_CACHE names a regular file: no folder can be made there.
    let file = write(&s, "not-a-folder", b"x");
    let (ok, err) = run(&s, &a, &[("REALFILL_CACHE", &p(&file))]);
    assert!(ok, "learning still succeeds: {err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: ") && l.contains("could not be cached") && l.contains("not-a-folder")),
        "{err}"
    );
    // A leftover of a killed run's cache write is removed by the next one that saves there.
    let scenes = s.dir.join("cache/scenes");
    std::fs::create_dir_all(&scenes).unwrap();
    let stale = scenes.join("0123abcd.tmp-4194400.bpk");
    std::fs::write(&stale, b"half a model").unwrap();
    let (ok, err) = run(&s, &a, &[]);
    assert!(ok, "{err}");
    assert!(!stale.exists(), "the leftover was removed");
    let names: Vec<String> =
        std::fs::read_dir(&scenes).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.len() == 1 && names[0].ends_with(".bpk") && !names[0].contains(".tmp-"), "{names:?}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn eval_scores_every_scene_it_can_and_names_the_others() {
    let s = scene("eval");
    let root = s.dir.join("scenes");
    let make = |name: &str, truth: Option<(u32, u32)>| {
        let d = root.join(name);
        std::fs::create_dir_all(d.join("refs")).unwrap();
        std::fs::copy(&s.target, d.join("target.png")).unwrap();
        std::fs::copy(&s.mask, d.join("mask.png")).unwrap();
        std::fs::copy(&s.reference, d.join("refs/ref.png")).unwrap();
        if let Some((w, h)) = truth {
            image::RgbImage::from_fn(w, h, |x, y| pattern(x, y, 0)).save(d.join("truth.png")).unwrap();
        }
    };
    make("a-good-rect", Some((80, 56)));
    make("b-small-truth-rect", Some((8, 8)));
    make("c-no-truth-rect", None);
    let base = strings(&["eval", &p(&root), "--engine", "patch", "--size", "80", "--backend", "cpu"]);
    let (ok, err) = run(&s, &base, &[]);
    assert!(!ok, "a failed scene makes the run fail: {err}");
    assert!(err.contains("a-good-rect") && err.contains("PSNR"), "{err}");
    assert!(err.contains("truth is 8×8 but the target is 80×56"), "{err}");
    assert!(err.contains("c-no-truth-rect") && err.contains("truth.png") && err.contains("not found"), "{err}");
    assert!(err.contains("2 of 3 scenes could not be scored"), "{err}");
    // --json: valid JSON on stdout with the scored case and an errors list.
    let o = bin().env("REALFILL_CACHE", s.dir.join("cache")).args(&base).arg("--json").output().unwrap();
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["cases"].as_array().unwrap().len(), 1);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["scene"], "b-small-truth-rect");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn bench_refuses_arguments_it_cannot_measure_with() {
    let s = scene("bench");
    for (arg, value, says) in [
        ("--batch", "0", "--batch 0"),
        ("--crop", "0", "--crop 0"),
        ("--crop", "1000000", "--crop 1000000"),
        ("--sizes", "100000", "--sizes 100000"),
        ("--sizes", "0", "--sizes 0"),
        ("--repeats", "0", "--repeats 0"),
        ("--photo-mp", "5000", "--photo-mp 5000"),
        ("--hole-mp", "0", "--hole-mp 0"),
    ] {
        let mut a = strings(&["bench", "--backend", "cpu", "--repeats", "1", "--sizes", "64", "--photo-mp", "1"]);
        // clap refuses a repeated flag: replace the base value.
        if let Some(i) = a.iter().position(|x| x == arg) {
            a[i + 1] = value.into();
        } else {
            a.extend([arg.into(), value.into()]);
        }
        let (ok, err) = run(&s, &a, &[]);
        assert!(!ok && !err.contains("panicked"), "{arg} {value}: {err}");
        assert!(err.lines().any(|l| l.starts_with("error: ") && l.contains(says)), "{arg} {value}: {err}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn sigterm_and_ctrl_c_end_a_run_without_leftovers() {
    for (sig, code) in [("TERM", 143), ("INT", 130)] {
        let s = scene(&format!("signal-{sig}"));
        let mut child = bin()
            .env("REALFILL_CACHE", s.dir.join("cache"))
            .args(["fill", "--engine", "scene", "--size", "80", "--backend", "cpu", "--learn-steps", "100000"])
            .args(std_args(&s))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut lines = std::io::BufRead::lines(stderr).map_while(|l| l.ok());
        assert!(lines.any(|l| l.contains("working size")), "the fill started");
        assert!(Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap().success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{sig}: exit status 128 + the signal");
        let rest: Vec<String> = lines.collect();
        assert!(rest.iter().any(|l| l.contains("interrupted; unfinished files removed")), "{rest:?}");
        let mut names = Vec::new();
        for d in [s.dir.clone(), s.dir.join("cache/scenes")] {
            if let Ok(rd) = std::fs::read_dir(&d) {
                names.extend(rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()));
            }
        }
        assert!(!names.iter().any(|n| n.contains(".tmp-") || n == "out.png"), "{names:?}");
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}

// --- a wrong Stable Diffusion folder (issue 18) ---

/// A copy of the committed tiny Stable Diffusion model to break.
fn sd_copy(s: &Scene) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = s.dir.join("sd");
    copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny"), &dir);
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites the tensors of a safetensors file through `edit(name, dtype, shape, bytes)`.
fn edit_tensors(path: &Path, edit: impl Fn(&str, &mut Vec<usize>, &mut Vec<u8>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    for (n, _, shape, data) in owned.iter_mut() {
        edit(n, shape, data);
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

type SdBreak = fn(&Path) -> PathBuf;

#[test]
fn a_wrong_stable_diffusion_folder_gets_one_clear_message() {
    let rows: Vec<(&str, SdBreak, &[&str])> = vec![
        ("not a folder", |m| m.join("nowhere"), &["nowhere", "not a folder", "stable-diffusion-2-inpainting"]),
        (
            "no UNet config",
            |m| {
                std::fs::remove_file(m.join("unet/config.json")).unwrap();
                m.to_path_buf()
            },
            &["unet/config.json", "missing"],
        ),
        (
            "no UNet weights",
            |m| {
                std::fs::remove_file(m.join("unet/diffusion_pytorch_model.fp16.safetensors")).unwrap();
                m.to_path_buf()
            },
            &["unet", "no .safetensors weights"],
        ),
        (
            "PyTorch .bin weights only",
            |m| {
                let w = m.join("vae/diffusion_pytorch_model.fp16.safetensors");
                std::fs::rename(&w, m.join("vae/diffusion_pytorch_model.bin")).unwrap();
                m.to_path_buf()
            },
            &["vae", ".bin", "realfill reads .safetensors"],
        ),
        (
            "truncated weights",
            |m| {
                let w = m.join("vae/diffusion_pytorch_model.fp16.safetensors");
                let b = std::fs::read(&w).unwrap();
                std::fs::write(&w, &b[..b.len() * 2 / 3]).unwrap();
                m.to_path_buf()
            },
            &["diffusion_pytorch_model.fp16.safetensors", "truncated", "download it again"],
        ),
        (
            "weights of another size than the config",
            |m| {
                edit_json(&m.join("unet/config.json"), |v| v["cross_attention_dim"] = 24.into());
                m.to_path_buf()
            },
            &["diffusion_pytorch_model.fp16.safetensors", "attn2.to_k.weight", "has shape", "config.json"],
        ),
        (
            "a text-to-image (4-channel) UNet",
            |m| {
                edit_json(&m.join("unet/config.json"), |v| v["in_channels"] = 4.into());
                edit_tensors(&m.join("unet/diffusion_pytorch_model.fp16.safetensors"), |n, shape, data| {
                    if n == "conv_in.weight" {
                        // [out, 9, 3, 3] → [out, 4, 3, 3]: keep the first four input channels.
                        let (o, k) = (shape[0], 9 * 2);
                        let kept: Vec<u8> = (0..o).flat_map(|i| data[i * 9 * k..i * 9 * k + 4 * k].to_vec()).collect();
                        *data = kept;
                        shape[1] = 4;
                    }
                });
                m.to_path_buf()
            },
            &["unet/config.json", "needs the 9-channel inpainting UNet"],
        ),
        (
            "an unsupported scheduler",
            |m| {
                edit_json(&m.join("scheduler/scheduler_config.json"), |v| {
                    v["_class_name"] = "FlowMatchEulerDiscreteScheduler".into()
                });
                m.to_path_buf()
            },
            &["scheduler_config.json", "FlowMatchEulerDiscreteScheduler", "not supported"],
        ),
        (
            "sample_size 100000",
            |m| {
                edit_json(&m.join("unet/config.json"), |v| v["sample_size"] = 100_000.into());
                m.to_path_buf()
            },
            &["unet/config.json", "`sample_size` is 100000"],
        ),
        (
            "sample_size 2^62",
            |m| {
                edit_json(&m.join("unet/config.json"), |v| v["sample_size"] = (1u64 << 62).into());
                m.to_path_buf()
            },
            &["unet/config.json", "`sample_size` is 4611686018427387904"],
        ),
        (
            "num_train_timesteps 10^12",
            |m| {
                edit_json(&m.join("scheduler/scheduler_config.json"), |v| {
                    v["num_train_timesteps"] = 1_000_000_000_000u64.into()
                });
                m.to_path_buf()
            },
            &["scheduler_config.json", "`num_train_timesteps` is 1000000000000"],
        ),
        (
            "VAE norm_num_groups 0",
            |m| {
                edit_json(&m.join("vae/config.json"), |v| v["norm_num_groups"] = 0.into());
                m.to_path_buf()
            },
            &["vae/config.json", "`norm_num_groups` is 0"],
        ),
        (
            "clip_sample_range -1",
            |m| {
                edit_json(&m.join("scheduler/scheduler_config.json"), |v| {
                    v["clip_sample"] = true.into();
                    v["clip_sample_range"] = (-1.0).into();
                });
                m.to_path_buf()
            },
            &["scheduler_config.json", "`clip_sample_range` is -1"],
        ),
        (
            "betas above 1",
            |m| {
                edit_json(&m.join("scheduler/scheduler_config.json"), |v| {
                    v["beta_schedule"] = "linear".into();
                    v["beta_end"] = 2.0.into();
                });
                m.to_path_buf()
            },
            &["scheduler_config.json", "`beta_end` 2", "betas must lie in [0, 1)"],
        ),
        (
            "weights file a FIFO",
            |m| {
                let w = m.join("unet/diffusion_pytorch_model.fp16.safetensors");
                std::fs::remove_file(&w).unwrap();
                mkfifo(&w);
                m.to_path_buf()
            },
            &["diffusion_pytorch_model.fp16.safetensors", "named pipe (FIFO)"],
        ),
        (
            "config.json a link to /dev/zero",
            |m| {
                let c = m.join("unet/config.json");
                std::fs::remove_file(&c).unwrap();
                std::os::unix::fs::symlink("/dev/zero", &c).unwrap();
                m.to_path_buf()
            },
            &["unet/config.json", "a device"],
        ),
        (
            "no tokenizer vocabulary",
            |m| {
                std::fs::remove_file(m.join("tokenizer/vocab.json")).unwrap();
                m.to_path_buf()
            },
            &["tokenizer/vocab.json", "missing"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, breaks, words)) in rows.into_iter().enumerate() {
        let s = scene(&format!("sd{i}"));
        let model = breaks(&sd_copy(&s));
        let out = s.dir.join("out.png");
        let mut a = strings(&["fill", "--engine", "sd", "--steps", "2", "--size", "80", "--backend", "cpu", "--quiet"]);
        a.extend(["--model".into(), p(&model)]);
        a.extend(std_args(&s));
        let (ok, code, err) = run_code(&s, &a, &[]);
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or("");
        let mut problems: Vec<String> =
            words.iter().filter(|w| !line.contains(*w)).map(|w| format!("lacks {w:?}")).collect();
        if ok {
            problems.push("succeeded".into());
        }
        if code != Some(1) {
            problems.push(format!("exit code {code:?}, not 1"));
        }
        if out.exists() {
            problems.push("wrote an output".into());
        }
        if err.contains("panicked") {
            problems.push("panicked".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {} — stderr: {err}", problems.join(", ")));
        }
        let _ = std::fs::remove_dir_all(&s.dir);
    }
    // And --engine sd without a folder is refused before anything is read.
    let s = scene("sd-none");
    let mut a = strings(&["fill", "--engine", "sd", "--backend", "cpu"]);
    a.extend(std_args(&s));
    let (ok, err) = run(&s, &a, &[]);
    if ok || !err.contains("--engine sd needs --model DIR") {
        failures.push(format!("no --model: {err}"));
    }
    assert!(failures.is_empty(), "{} of the rows failed:\n{}", failures.len(), failures.join("\n"));
}

// --- hostile input, third round (issue 32): files that are not what they say ---

/// Exit code and stderr of `realfill ARGS` with no display (the app's window cannot open).
fn run_headless(args: &[&Path], env_remove: &[&str], env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let mut c = bin();
    c.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY").args(args);
    for k in env_remove {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A crafted project opened as `realfill PROJECT`: refused with the file named before the
/// window (which cannot open here) is tried; no abort, no panic, no hang.
#[test]
fn crafted_projects_are_refused_by_name() {
    let s = scene("projects");
    let project = |name: &str, fields: &str| {
        let t = format!(r#"{{"format":"realfill-project","version":1,"target":"{}",{fields}}}"#, p(&s.target));
        write(&s, name, t.as_bytes())
    };
    let refs = vec![format!("\"{}\"", p(&s.reference)); 6000].join(",");
    let fifo = s.dir.join("fifo.realfill");
    mkfifo(&fifo);
    let zero = s.dir.join("zero.realfill");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let cases = [
        (
            project("runs.realfill", r#""mask":{"width":100000,"height":100000,"runs":[10000000000]}"#),
            "mask is 100000×100000",
        ),
        (project("refs.realfill", &format!(r#""references":[{refs}]"#)), "lists 6000 references"),
        (fifo, "named pipe (FIFO)"),
        (zero, "a device"),
    ];
    for (path, says) in cases {
        let (code, err) = run_headless(&[&path], &[], &[("REALFILL_CACHE", &s.dir.join("cache"))]);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!matches!(code, Some(0) | Some(101) | Some(134) | None), "{name}: exit {code:?}: {err}");
        let line = err.lines().find(|l| l.starts_with("error: ") && l.contains(&name)).unwrap_or("");
        assert!(line.contains(says), "{name}: {err}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Links planted, in the output's folder, at every temporary name the next runs could use
/// with predictable names: none is followed, the file they point to is untouched and the
/// output is a file of its own.
#[test]
fn a_link_planted_at_the_temporary_name_is_never_followed() {
    let s = scene("planted");
    let victim = write(&s, "victim.txt", b"precious");
    let next = std::process::id();
    for pid in next..next + 2000 {
        std::os::unix::fs::symlink(&victim, s.dir.join(format!(".out.png.tmp-{pid}"))).unwrap();
    }
    let mut a = strings(&["fill", "--engine", "patch", "--size", "80", "--backend", "cpu", "--quiet"]);
    a.extend(std_args(&s));
    let (ok, err) = run(&s, &a, &[]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let out = s.dir.join("out.png");
    assert!(!std::fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
    assert_eq!(image::open(&out).unwrap().width(), 80);
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// eval: a reference that is a FIFO is an error naming it (not skipped); a `refs/` that is a
/// symbolic link (here to a folder holding the truth) is refused.
#[test]
fn eval_refuses_references_that_are_not_photos_of_their_own() {
    let s = scene("eval-refs");
    let root = s.dir.join("scenes");
    for name in ["a-fifo-rect", "b-link-rect"] {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&s.target, d.join("target.png")).unwrap();
        std::fs::copy(&s.mask, d.join("mask.png")).unwrap();
        std::fs::copy(&s.target, d.join("truth.png")).unwrap();
    }
    std::fs::create_dir_all(root.join("a-fifo-rect/refs")).unwrap();
    std::fs::copy(&s.reference, root.join("a-fifo-rect/refs/ref.png")).unwrap();
    mkfifo(&root.join("a-fifo-rect/refs/zz.png"));
    std::os::unix::fs::symlink(root.join("b-link-rect"), root.join("b-link-rect/refs")).unwrap();
    let a = strings(&["eval", &p(&root), "--engine", "patch", "--size", "80", "--backend", "cpu"]);
    let (ok, code, err) = run_code(&s, &a, &[]);
    assert!(!ok && code == Some(1), "{code:?}: {err}");
    assert!(err.contains("zz.png") && err.contains("named pipe (FIFO)"), "{err}");
    assert!(err.contains("b-link-rect/refs") && err.contains("symbolic link"), "{err}");
    assert!(!err.contains("PSNR"), "nothing was scored: {err}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Without REALFILL_CACHE, XDG_CACHE_HOME and HOME nothing is cached (never a folder every
/// user shares); a cached model that is a FIFO is dropped with a warning, not waited on.
#[test]
fn the_model_cache_is_per_user_and_never_waits_on_a_fifo() {
    let s = scene("cache-fifo");
    let mut a =
        strings(&["learn", "--learn-steps", "2", "--batch", "1", "--crop", "16", "--size", "64", "--backend", "cpu"]);
    a.extend(args(&s, &s.target, Some(&s.mask), &[&s.reference], &s.dir.join("x.png"))[..6].to_vec());
    let a: Vec<&Path> = a.iter().map(Path::new).collect();
    let (code, err) = run_headless(&a, &["HOME", "XDG_CACHE_HOME", "REALFILL_CACHE"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("no per-user cache folder") && !err.contains("realfill-cache"), "{err}");
    // With a cache: learn once, then put a FIFO where the model is.
    let cache = s.dir.join("cache");
    let (code, err) = run_headless(&a, &[], &[("REALFILL_CACHE", &cache)]);
    assert_eq!(code, Some(0), "{err}");
    let model = std::fs::read_dir(cache.join("scenes")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&model).unwrap();
    mkfifo(&model);
    let (code, err) = run_headless(&a, &[], &[("REALFILL_CACHE", &cache)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("named pipe (FIFO)") && err.contains("relearning"), "{err}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_token_file_that_is_a_device_is_refused_by_name() {
    let s = scene("token");
    let mut a = strings(&["fill", "--backend", "remote=ws://127.0.0.1:9", "--token-file", "/dev/zero"]);
    a.extend(std_args(&s));
    let (ok, code, err) = run_code(&s, &a, &[]);
    assert!(!ok && code == Some(1), "{code:?}: {err}");
    assert!(err.contains("/dev/zero") && err.contains("a device"), "{err}");
    let _ = std::fs::remove_dir_all(&s.dir);
}
