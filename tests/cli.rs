//! End-to-end tests of the command line on a small generated scene (CPU backend, tiny model
//! settings so that each run takes seconds).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realfill"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("realfill-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pattern(x: u32, y: u32, dx: u32) -> image::Rgb<u8> {
    let u = x + dx;
    let c = ((u / 6 + y / 6) % 2) as u8;
    image::Rgb([40 + 150 * c, (u * 3 % 200) as u8 + 30, (y * 4 % 200) as u8 + 20])
}

/// target 80×56 with a 24×16 hole, one reference shifted by 5 px.
fn scene(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let t = image::RgbImage::from_fn(80, 56, |x, y| pattern(x, y, 0));
    let r = image::RgbImage::from_fn(80, 56, |x, y| pattern(x, y, 5));
    let m = image::GrayImage::from_fn(80, 56, |x, y| {
        image::Luma([if (28..52).contains(&x) && (20..36).contains(&y) { 255 } else { 0 }])
    });
    let (tp, mp, rp) = (dir.join("target.png"), dir.join("mask.png"), dir.join("ref.png"));
    t.save(&tp).unwrap();
    m.save(&mp).unwrap();
    r.save(&rp).unwrap();
    (tp, mp, rp)
}

/// Tiny model settings: each run takes seconds.
const TINY: &[&str] = &["--size", "80", "--learn-steps", "4", "--batch", "2", "--crop", "16", "--backend", "cpu"];

/// `realfill SUB --target … --mask … --ref …` on the scene in `dir`, with its own cache.
fn scene_cmd(dir: &Path, sub: &str) -> Command {
    let mut c = bin();
    c.env("REALFILL_CACHE", dir.join("cache"))
        .args([sub, "--target"])
        .arg(dir.join("target.png"))
        .arg("--mask")
        .arg(dir.join("mask.png"))
        .arg("--ref")
        .arg(dir.join("ref.png"));
    c
}

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
    for engine in ["patch", "scene"] {
        fill_is_sound(engine);
    }
}

fn fill_is_sound(engine: &str) {
    let d = tmp(&format!("fill-{engine}"));
    let (tp, _, _) = scene(&d);
    let before = std::fs::read(&tp).unwrap();
    let out1 = d.join("out1.png");
    let fill = |d: &Path, extra: &[&str], out: &Path| {
        let mut args = vec!["--engine", engine];
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
