//! End-to-end tests of the command line on a small generated scene (CPU backend, tiny model
//! settings so that each run takes seconds).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{bin, pattern, scene, scene_cmd};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli", name)
}

/// Tiny model settings: each run takes seconds.
const TINY: &[&str] = &["--size", "80", "--learn-steps", "4", "--batch", "2", "--crop", "16", "--backend", "cpu"];

fn fill(dir: &Path, extra: &[&str], out: &Path) -> Output {
    scene_cmd(dir, "fill")
        .arg("--out")
        .arg(out)
        .args(TINY)
        .args(["--steps", "3", "--quiet"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn fill_keeps_known_pixels_changes_the_hole_and_is_deterministic() {
    for engine in ["patch", "scene", "sd"] {
        fill_is_sound(engine);
    }
}

/// The committed tiny Stable Diffusion model (random weights: it paints noise, but through the
/// whole real path).
const SD_TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd-tiny");

fn fill_is_sound(engine: &str) {
    let d = tmp(&format!("fill-{engine}"));
    let (tp, _, _) = scene(&d);
    // The hole blacked out: a fill that reproduces the pattern exactly (a copy of it shifted by
    // its period) must still be seen to change it.
    let mut blacked = image::open(&tp).unwrap().to_rgb8();
    for y in 20..36 {
        for x in 28..52 {
            blacked.put_pixel(x, y, image::Rgb([0, 0, 0]));
        }
    }
    blacked.save(&tp).unwrap();
    let before = std::fs::read(&tp).unwrap();
    let out1 = d.join("out1.png");
    let fill = |d: &Path, extra: &[&str], out: &Path| {
        let mut args = vec!["--engine", engine];
        if engine == "sd" {
            args.extend(["--model", SD_TINY]);
        }
        args.extend_from_slice(extra);
        fill(d, &args, out)
    };
    let o = fill(&d, &["--no-cache"], &out1);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let res = image::open(&out1).unwrap().to_rgb8();
    let tgt = image::open(&tp).unwrap().to_rgb8();
    assert_eq!(res.dimensions(), (80, 56));
    let mut changed = 0;
    for y in 0..56 {
        for x in 0..80 {
            let in_hole = (28..52).contains(&x) && (20..36).contains(&y);
            // the feather band is at most a few pixels wide here
            let far = !((22..58).contains(&x) && (14..42).contains(&y));
            if far {
                assert_eq!(res.get_pixel(x, y), tgt.get_pixel(x, y), "known pixel {x},{y} changed");
            }
            if in_hole && res.get_pixel(x, y) != tgt.get_pixel(x, y) {
                changed += 1;
            }
        }
    }
    assert!(changed > 300, "{engine}: hole was filled ({changed} pixels changed)");
    assert_eq!(std::fs::read(&tp).unwrap(), before, "target untouched");
    let out2 = d.join("out2.png");
    assert!(fill(&d, &["--no-cache"], &out2).status.success());
    assert_eq!(image::open(&out2).unwrap().to_rgb8(), res, "same seed, same output");
    let out3 = d.join("out3.png");
    assert!(fill(&d, &["--no-cache", "--seed", "7"], &out3).status.success());
    assert_ne!(image::open(&out3).unwrap().to_rgb8(), res, "another seed, another sample");
}

#[test]
fn candidates_are_ranked_and_written_beside_the_output() {
    let d = tmp("candidates");
    scene(&d);
    let out = d.join("best.png");
    let o = fill(&d, &["--no-cache", "--candidates", "3", "--engine", "patch"], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr: {err}");
    for name in ["best.png", "best-2.png", "best-3.png"] {
        assert!(d.join(name).is_file(), "{name} written");
    }
    assert!(!d.join("best-4.png").exists());
    let a = image::open(d.join("best.png")).unwrap().to_rgb8();
    let b = image::open(d.join("best-2.png")).unwrap().to_rgb8();
    assert_ne!(a, b, "different seeds, different candidates");
}

#[test]
fn stable_diffusion_learns_the_scene_then_fills_with_its_lora_and_ranks_candidates() {
    let d = tmp("sd-learn");
    scene(&d);
    let sd = ["--engine", "sd", "--model", SD_TINY, "--lora-steps", "6", "--lora-batch", "2"];
    // Not --quiet: what the fill used is on stderr.
    let fill = |d: &Path, extra: &[&str], out: &Path| {
        scene_cmd(d, "fill").arg("--out").arg(out).args(TINY).args(["--steps", "3"]).args(extra).output().unwrap()
    };
    let out = d.join("plain.png");
    let o = fill(&d, &sd, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("no LoRA learned for this scene"), "{err}");
    let o = scene_cmd(&d, "learn").args(sd).args(["--backend", "cpu"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("learning 6/6") && err.contains("the scene's LoRA learned"), "{err}");
    let lora = std::fs::read_dir(d.join("cache/sd-lora")).unwrap().next().unwrap().unwrap().path();
    let o = scene_cmd(&d, "learn").args(sd).args(["--backend", "cpu"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("already learned (cache)"));
    let best = d.join("best.png");
    let mut args = sd.to_vec();
    args.extend(["--candidates", "2"]);
    let o = fill(&d, &args, &best);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("filling with the LoRA"), "{err}");
    assert!(best.is_file() && d.join("best-2.png").is_file());
    assert_ne!(
        image::open(&best).unwrap().to_rgb8(),
        image::open(&out).unwrap().to_rgb8(),
        "the LoRA changed the fill"
    );
    // A LoRA file named explicitly, and one that is not a LoRA.
    let o = fill(&d, &["--engine", "sd", "--model", SD_TINY, "--lora", lora.to_str().unwrap()], &d.join("x.png"));
    assert!(o.status.success());
    let not = d.join("target.png");
    let o = fill(&d, &["--engine", "sd", "--model", SD_TINY, "--lora", not.to_str().unwrap()], &d.join("y.png"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("target.png") && err.contains("not a LoRA"), "{err}");
}

/// `realfill quantize` writes a 4-bit folder that `fill --engine sd` loads like any other and
/// says it runs on; quantising it again, or wrong bits, is refused in one line.
#[test]
fn a_quantised_model_fills_and_says_which_weights_it_runs_on() {
    let d = tmp("quantize");
    scene(&d);
    let q = d.join("sd-4bit");
    let o = bin().args(["quantize", "--model", SD_TINY, "--bits", "4", "--out"]).arg(&q).output().unwrap();
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("4-bit NF4 weights (block 64)"));
    let out = d.join("out.png");
    let o = scene_cmd(&d, "fill")
        .arg("--out")
        .arg(&out)
        .args(TINY)
        .args(["--steps", "2", "--no-cache", "--engine", "sd", "--model"])
        .arg(&q)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr: {err}");
    assert!(err.contains("UNet: 4-bit NF4 weights (block 64)"), "stderr: {err}");
    assert!(out.is_file());
    for (args, says) in [
        (vec!["--model".into(), q.clone(), "--bits".into(), "8".into()], "already quantised"),
        (vec!["--model".into(), SD_TINY.into(), "--bits".into(), "6".into()], "--bits 6"),
    ] {
        let o = bin().arg("quantize").args(args).arg("--out").arg(d.join("again")).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says) && err.lines().count() == 1, "stderr: {err}");
        assert!(!d.join("again").exists());
    }
}

#[test]
fn extend_grows_the_canvas() {
    let d = tmp("extend");
    scene(&d);
    let out = d.join("wide.png");
    let o = fill(&d, &["--no-cache", "--extend", "8,0,16,8"], &out);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let res = image::open(&out).unwrap().to_rgb8();
    assert_eq!(res.dimensions(), (104, 64));
    let tgt = image::open(d.join("target.png")).unwrap().to_rgb8();
    assert_eq!(res.get_pixel(8 + 2, 2), tgt.get_pixel(2, 2), "original placed at the offset");
}

#[test]
fn second_fill_uses_the_cached_model() {
    let d = tmp("cache");
    scene(&d);
    let o = scene_cmd(&d, "learn").args(TINY).output().unwrap();
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let o = scene_cmd(&d, "fill")
        .arg("--out")
        .arg(d.join("o.png"))
        .args(TINY)
        .args(["--steps", "3", "--engine", "scene"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr: {err}");
    assert!(err.contains("cached scene model"), "stderr: {err}");
}

#[test]
fn learn_with_the_patch_engine_is_refused_with_the_reason() {
    let d = tmp("learn-patch");
    scene(&d);
    let o = scene_cmd(&d, "learn").args(TINY).args(["--engine", "patch"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "stderr: {err}");
    assert!(err.contains("patch engine learns nothing"), "stderr: {err}");
    assert!(!d.join("cache").exists(), "nothing was learned or cached");
}

/// `realfill fill --target T --mask M --out O [--ref R]` with tiny settings; returns (success, stderr).
fn fill_with(target: &Path, mask: &Path, out: &Path, reference: Option<&Path>) -> (bool, String) {
    let mut c = bin();
    c.args(["fill", "--target"]).arg(target).arg("--mask").arg(mask).arg("--out").arg(out).args(TINY);
    if let Some(r) = reference {
        c.arg("--ref").arg(r);
    }
    let o = c.args(["--steps", "3", "--quiet"]).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn bad_input_gives_one_clear_line_and_nonzero_exit() {
    let d = tmp("bad");
    let (tp, mp, rp) = scene(&d);
    let out = d.join("o.png");
    let (ok, e) = fill_with(&d.join("missing.png"), &mp, &out, None);
    assert!(!ok && e.contains("missing.png") && e.contains("not found"), "{e}");
    // output over an input is refused and the input stays identical
    let before = std::fs::read(&tp).unwrap();
    let (ok, e) = fill_with(&tp, &mp, &tp, Some(&rp));
    assert!(!ok && e.contains("one of the inputs"), "{e}");
    assert_eq!(std::fs::read(&tp).unwrap(), before);
    // mask of the wrong size
    let small = d.join("small.png");
    image::GrayImage::new(10, 10).save(&small).unwrap();
    let (ok, e) = fill_with(&tp, &small, &out, None);
    assert!(!ok && e.contains("small.png") && e.contains("target's size"), "{e}");
    // empty mask: nothing to fill
    let empty = d.join("empty.png");
    image::GrayImage::new(80, 56).save(&empty).unwrap();
    let (ok, e) = fill_with(&tp, &empty, &out, None);
    assert!(!ok && e.contains("nothing to fill"), "{e}");
    assert!(!out.exists(), "no partial output");
}

// --- what a photographer's file keeps (issue 15) ---

/// An EXIF block (TIFF, little endian): Orientation = `orientation`, ImageDescription = `text`.
fn exif_block(orientation: u16, text: &str) -> Vec<u8> {
    let mut desc = text.as_bytes().to_vec();
    desc.push(0);
    let ifd_len = 2 + 2 * 12 + 4;
    let data_at = 8 + ifd_len as u32;
    let mut t = b"II*\x00\x08\x00\x00\x00".to_vec();
    t.extend(2u16.to_le_bytes());
    // ImageDescription (0x010E), ASCII, count, offset.
    t.extend(0x010Eu16.to_le_bytes());
    t.extend(2u16.to_le_bytes());
    t.extend((desc.len() as u32).to_le_bytes());
    t.extend(data_at.to_le_bytes());
    // Orientation (0x0112), SHORT, 1, value.
    t.extend(0x0112u16.to_le_bytes());
    t.extend(3u16.to_le_bytes());
    t.extend(1u32.to_le_bytes());
    t.extend(orientation.to_le_bytes());
    t.extend([0, 0]);
    t.extend(0u32.to_le_bytes());
    t.extend(desc);
    t
}

fn metadata_of(path: &Path) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    use image::ImageDecoder;
    let mut d = image::ImageReader::open(path).unwrap().with_guessed_format().unwrap().into_decoder().unwrap();
    (d.icc_profile().unwrap(), d.exif_metadata().unwrap())
}

#[test]
fn a_fill_keeps_the_colour_profile_and_the_exif_and_its_colours_round_trip() {
    use image::ImageEncoder;
    let d = tmp("colour");
    let p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    let colour = realfill::scene::colour::Colour::from_icc(&p3).unwrap();
    // One scene seen by two cameras: the target in Display P3 (saturated colours), the
    // reference (shifted 7 px) in sRGB, holding the same colours as sRGB numbers. Coloured
    // blocks for the alignment to lock onto.
    let (w, h) = (192u32, 128u32);
    let mut seed = 7u64;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as f32 / (1u64 << 31) as f32
    };
    let blocks: Vec<[f32; 7]> = (0..70)
        .map(|_| {
            // Saturated colours inside the sRGB gamut: each channel low or high (where P3 and
            // sRGB numbers differ, and the sRGB reference can hold them).
            let mut ch = || if rnd() < 0.5 { 0.25 + 0.1 * rnd() } else { 0.65 + 0.15 * rnd() };
            let (r, g, b) = (ch(), ch(), ch());
            [rnd() * 210.0, rnd() * 140.0, 4.0 + rnd() * 14.0, 4.0 + rnd() * 10.0, r, g, b]
        })
        .collect();
    let p3_px = |x: u32, y: u32| {
        let (x, y) = (x as f32, y as f32);
        let mut c = [0.45, 0.5, 0.42];
        for b in &blocks {
            if (x - b[0]).abs() < b[2] && (y - b[1]).abs() < b[3] {
                c = [b[4], b[5], b[6]];
            }
        }
        c
    };
    let to_u8 = |v: &[f32]| v.iter().map(|c| (c * 255.0).round() as u8).collect::<Vec<u8>>();
    let target: Vec<f32> = (0..h).flat_map(|y| (0..w).flat_map(move |x| p3_px(x, y))).collect();
    let mut srgb = realfill::scene::RgbF {
        width: w as usize,
        height: h as usize,
        data: (0..h).flat_map(|y| (0..w).flat_map(move |x| p3_px(x + 7, y))).collect(),
    };
    colour.to_srgb(&mut srgb);
    // The target as PNG (exact pixels) with the profile and EXIF.
    let tp = d.join("target.png");
    let mut png = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut png);
    enc.set_icc_profile(p3.clone()).unwrap();
    enc.set_exif_metadata(exif_block(1, "realfill test camera")).unwrap();
    enc.write_image(&to_u8(&target), w, h, image::ExtendedColorType::Rgb8).unwrap();
    std::fs::write(&tp, &png).unwrap();
    let rp = d.join("ref.png");
    image::RgbImage::from_raw(w, h, to_u8(&srgb.data)).unwrap().save(&rp).unwrap();
    let mp = d.join("mask.png");
    let hole = |x: u32, y: u32| (72..120).contains(&x) && (48..80).contains(&y);
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([if hole(x, y) { 255 } else { 0 }])).save(&mp).unwrap();
    let decoded_target = image::open(&tp).unwrap().to_rgb8();
    for out in ["out.png", "out.jpg", "out.webp"] {
        let op = d.join(out);
        let o = bin()
            .args([
                "fill",
                "--target",
                tp.to_str().unwrap(),
                "--mask",
                mp.to_str().unwrap(),
                "--ref",
                rp.to_str().unwrap(),
            ])
            .args(["--out", op.to_str().unwrap(), "--engine", "patch", "--size", "192", "--backend", "cpu"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && err.contains("1 of 1 references aligned"), "{out}: {err}");
        let (icc, exif) = metadata_of(&op);
        assert_eq!(icc.as_deref(), Some(&p3[..]), "{out}: the profile is written back");
        let exif = exif.unwrap_or_else(|| panic!("{out}: EXIF kept"));
        assert!(exif.windows(20).any(|w| w == b"realfill test camera"), "{out}: the EXIF's fields are kept");
        if out == "out.png" {
            // Colours: the hole holds the target's P3 numbers of what the reference shows
            // (converted from the reference's sRGB), not the reference's sRGB numbers.
            let result = image::open(&op).unwrap().to_rgb8();
            let (mut to_p3, mut to_srgb, mut n) = (0.0, 0.0, 0.0);
            for y in 52..76 {
                for x in 76..116 {
                    let r = result.get_pixel(x, y).0;
                    let want = to_u8(&p3_px(x, y));
                    let srgb_numbers = to_u8(&srgb.data[3 * (y * w + x - 7) as usize..][..3]);
                    for k in 0..3 {
                        to_p3 += (r[k] as f32 - want[k] as f32).abs();
                        to_srgb += (r[k] as f32 - srgb_numbers[k] as f32).abs();
                    }
                    n += 3.0;
                }
            }
            assert!(
                to_p3 / n < 4.0 && to_srgb / n > 8.0,
                "mean level difference: to P3 {:.1}, to sRGB numbers {:.1}",
                to_p3 / n,
                to_srgb / n
            );
            // Known pixels stay the original's, bit for bit.
            assert_eq!(result.get_pixel(2, 2), decoded_target.get_pixel(2, 2));
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn exif_orientation_is_reset_once_the_pixels_are_upright() {
    let d = tmp("exif-out");
    let (_, mp, rp) = scene(&d);
    // The target stored turned (56 wide, 80 high) with orientation 6: upright it is 80×56.
    let stored = image::RgbImage::from_fn(56, 80, |x, y| pattern(y, 55 - x, 0));
    let tp = d.join("turned.jpg");
    let mut jpg = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 100);
    image::ImageEncoder::set_exif_metadata(&mut enc, exif_block(6, "turned camera")).unwrap();
    image::ImageEncoder::write_image(enc, stored.as_raw(), 56, 80, image::ExtendedColorType::Rgb8).unwrap();
    std::fs::write(&tp, &jpg).unwrap();
    let op = d.join("out.jpg");
    let o = bin()
        .args(["fill", "--target", tp.to_str().unwrap(), "--mask", mp.to_str().unwrap(), "--ref", rp.to_str().unwrap()])
        .args([
            "--out",
            op.to_str().unwrap(),
            "--engine",
            "patch",
            "--size",
            "80",
            "--backend",
            "cpu",
            "--quiet",
            "--quality",
            "90",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, exif) = metadata_of(&op);
    let exif = exif.expect("EXIF kept");
    assert_eq!(image::metadata::Orientation::from_exif_chunk(&exif), Some(image::metadata::Orientation::NoTransforms));
    assert!(exif.windows(13).any(|w| w == b"turned camera"));
    let out = image::open(&op).unwrap();
    assert_eq!((out.width(), out.height()), (80, 56), "upright, and shown upright");
    let _ = std::fs::remove_dir_all(&d);
}
