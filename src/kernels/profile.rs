//! Time spent per operation kind when REALFILL_PROFILE is set (printed by `report`), for
//! the CPU network's profile (`realfill torch-check DIR --time --cpu-only`).

use std::sync::Mutex;
use std::time::Instant;
static TOTALS: Mutex<Vec<(&'static str, f64, usize)>> = Mutex::new(Vec::new());

pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::switches::get().profile)
}

pub fn time<T>(what: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed().as_secs_f64();
    let mut v = TOTALS.lock().unwrap();
    match v.iter_mut().find(|e| e.0 == what) {
        Some(e) => {
            e.1 += dt;
            e.2 += 1;
        }
        None => v.push((what, dt, 1)),
    }
    r
}

static FLOPS: Mutex<Vec<(&'static str, f64, f64)>> = Mutex::new(Vec::new());

pub fn add_flops(what: &'static str, gflop: f64, secs: f64) {
    let mut v = FLOPS.lock().unwrap();
    match v.iter_mut().find(|e| e.0 == what) {
        Some(e) => {
            e.1 += gflop;
            e.2 += secs;
        }
        None => v.push((what, gflop, secs)),
    }
}

/// Print the totals under a heading and start counting afresh.
pub fn report(heading: &str) {
    if enabled() {
        eprintln!("-- {heading}");
        for (what, s, n) in TOTALS.lock().unwrap().iter() {
            eprintln!("{what:<32} {:>9.1} ms in {n} calls", s * 1e3);
        }
        for (what, g, s) in FLOPS.lock().unwrap().iter() {
            eprintln!("{what:<32} {:>9.1} ms {:>7.1} GFLOP/s", s * 1e3, g / s);
        }
        TOTALS.lock().unwrap().clear();
        FLOPS.lock().unwrap().clear();
    }
}
