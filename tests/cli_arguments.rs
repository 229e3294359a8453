//! The whole command line's argument space (issue 16), as a property test: `realfill fill` and
//! `realfill learn` with any mix of sizes, counts, extensions, canvas extensions and output
//! formats, valid or absurd, never panic or abort, stay within the memory budget (a job above
//! it is refused up front; the process runs under an address-space limit of three times the
//! budget, so an allocation beyond that aborts and fails the test), leave the inputs unchanged
//! and leave no temporary files; a success writes a readable image. `PROPTEST_CASES` sets the
//! number of cases (48 by default: each case starts the program).

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;

const BUDGET_GIB: f64 = 1.0;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        // Each case is a process: shrinking re-runs many; the failing arguments are printed.
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    }
}

/// A 96×64 scene (target, mask, one reference shifted by 4 px) in its own folder.
fn scene(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let px =
        |x: u32, y: u32| image::Rgb([((x / 5 + y / 7) % 2 * 150 + 40) as u8, (x * 2 % 250) as u8, (y * 3 % 250) as u8]);
    let (t, m, r) = (dir.join("t.png"), dir.join("m.png"), dir.join("r.png"));
    image::RgbImage::from_fn(96, 64, px).save(&t).unwrap();
    image::RgbImage::from_fn(96, 64, |x, y| px(x + 4, y)).save(&r).unwrap();
    image::GrayImage::from_fn(96, 64, |x, y| {
        image::Luma([if (30..60).contains(&x) && (20..40).contains(&y) { 255 } else { 0 }])
    })
    .save(&m)
    .unwrap();
    (t, m, r)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[derive(Debug, Clone)]
struct Case {
    learn: bool,
    engine: &'static str,
    size: &'static str,
    steps: &'static str,
    learn_steps: &'static str,
    batch: &'static str,
    crop: &'static str,
    candidates: &'static str,
    extend: &'static str,
    out: &'static str,
    seed: u64,
}

/// Mostly a valid value (so that a good share of cases run a whole job), sometimes an absurd one.
fn field(valid: &'static [&'static str], absurd: &'static [&'static str]) -> BoxedStrategy<&'static str> {
    prop_oneof![9 => proptest::sample::select(valid), 1 => proptest::sample::select(absurd)].boxed()
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        (
            any::<bool>(),
            field(&["patch", "scene", "auto"], &["bogus", ""]),
            field(&["32", "64", "96"], &["0", "8", "100000", "-5", "x"]),
        ),
        (
            field(&["1", "2"], &["0", "1001"]),
            field(&["1", "2"], &["0", "100001"]),
            field(&["1", "2", "64"], &["0", "65", "18446744073709551615"]),
        ),
        (field(&["16", "64", "512"], &["0", "8", "17", "1000000"]), field(&["1", "2"], &["0", "33"])),
        field(
            &["0,0,0,0", "0,0,12,0", "3,5,7,9", "5000,5000,5000,5000"],
            &["-1,0,0,0", "20001,0,0,0", "1,2,3", "", "20000,20000,20000,20000"],
        ),
        field(
            &["o.png", "o.jpg", "o.ico", "o.gif", "o.tif", "o.webp", "o.qoi", "o.bmp", "o.ppm", "o.tga"],
            &["o.txt", "o", "o.avif", "sub/o.png", "o.exr"],
        ),
        any::<u64>(),
    )
        .prop_map(|((learn, engine, size), (steps, learn_steps, batch), (crop, candidates), extend, out, seed)| {
            Case { learn, engine, size, steps, learn_steps, batch, crop, candidates, extend, out, seed }
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_arguments_end_cleanly(c in arb_case()) {
        let dir = std::env::temp_dir().join(format!("realfill-args-{}-{}", std::process::id(), c.seed));
        let _ = std::fs::remove_dir_all(&dir);
        let (t, m, r) = scene(&dir);
        let before = files(&dir);
        let mut a: Vec<String> = vec![if c.learn { "learn" } else { "fill" }.into()];
        for (flag, v) in [
            ("--target", t.to_str().unwrap()), ("--mask", m.to_str().unwrap()), ("--ref", r.to_str().unwrap()),
            ("--engine", c.engine), ("--size", c.size), ("--learn-steps", c.learn_steps), ("--batch", c.batch),
            ("--crop", c.crop), ("--extend", c.extend),
        ] {
            a.push(format!("{flag}={v}"));
        }
        if !c.learn {
            a.extend([format!("--steps={}", c.steps), format!("--candidates={}", c.candidates)]);
            a.push(format!("--out={}", dir.join(c.out).display()));
        }
        a.extend(["--backend=cpu".into(), "--no-cache".into(), format!("--seed={}", c.seed)]);
        // Address space: three times the budget (threads' stacks and the allocator's arenas
        // are address space too, not memory in use).
        let limit_kib = (3.0 * BUDGET_GIB * 1024.0 * 1024.0) as u64;
        let quoted: Vec<String> = a.iter().map(|x| format!("'{x}'")).collect();
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {limit_kib}; exec '{}' {}", env!("CARGO_BIN_EXE_realfill"), quoted.join(" ")))
            .env("REALFILL_MEMORY_GIB", BUDGET_GIB.to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // 0: done; 1: refused with a message; 2: clap's usage error. Anything else (101 a
        // panic, 134 an abort, a signal) is a defect.
        prop_assert!(matches!(o.status.code(), Some(0..=2)), "{:?}: {:?}\n{}", a, o.status, err);
        prop_assert!(!err.contains("panicked"), "{:?}\n{}", a, err);
        if o.status.code() == Some(1) {
            prop_assert!(err.lines().any(|l| l.starts_with("error: ")), "{:?}\n{}", a, err);
        }
        if o.status.success() && !c.learn {
            prop_assert!(image::open(dir.join(c.out)).is_ok(), "{:?}: no readable output\n{}", a, err);
        }
        let after = files(&dir);
        for (name, bytes) in &before {
            prop_assert!(after.iter().any(|(n, b)| n == name && b == bytes), "{:?}: input {} changed", a, name);
        }
        prop_assert!(!after.iter().any(|(n, _)| n.contains(".tmp-")), "{:?}: temporary files left", a);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
