//! Temporary files realfill writes before renaming them into place (results, projects, cached
//! scene models), so that no interruption leaves them behind:
//! - each one is created through `Temp::create`, which records it while it exists;
//! - Ctrl-C, SIGTERM and SIGHUP (`cleanup_on_signals`) remove every recorded one and exit;
//! - a SIGKILL cannot be caught: the next run that writes into the same folder removes the
//!   leftovers of runs that are gone (`remove_stale`) — only names realfill itself makes,
//!   `.NAME.tmp-PID` beside an output and `KEY.tmp-PID.bpk` in the model cache, and only when
//!   process PID no longer runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The temporary files that exist now (created and not yet renamed or removed).
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while the lock was held leaves the list as valid as before.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A temporary file, removed when dropped unless it was renamed into place (`persist`).
pub struct Temp {
    path: PathBuf,
}

impl Temp {
    /// Create (truncate) the file at `path` and record it. Creation happens under the record's
    /// lock, so a signal's cleanup either sees the file or runs before it exists.
    pub fn create(path: PathBuf) -> std::io::Result<(Temp, fs::File)> {
        let mut l = live();
        let f = fs::File::create(&path)?;
        l.push(path.clone());
        Ok((Temp { path }, f))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rename the file to `dest` (same folder); it is then no longer temporary.
    pub fn persist(self, dest: &Path) -> std::io::Result<()> {
        fs::rename(&self.path, dest)?;
        forget(&self.path);
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        forget(&self.path);
    }
}

fn forget(path: &Path) {
    live().retain(|p| p != path);
}

/// `.NAME.tmp-PID` beside `dest`: where `dest` is written before it is renamed into place.
pub fn beside(dest: &Path) -> Option<PathBuf> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name()?.to_string_lossy();
    Some(dir.join(format!(".{name}.tmp-{}", std::process::id())))
}

/// Bytes `beside` adds to a file name (a dot, ".tmp-" and a process id of up to 10 digits).
pub const BESIDE_EXTRA: usize = 16;

/// Whether process `pid` still runs. Unknown (no /proc) counts as running: nothing is removed.
fn running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// The process id in `name` if it has the form `prefix` + digits + `suffix`.
fn pid_in(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Remove leftovers of `dest`'s temporary files (`.NAME.tmp-PID`) from runs no longer running.
pub fn remove_stale(dest: &Path) {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!(".{name}.tmp-");
    remove_dead(dir, |n| pid_in(n, &prefix, ""));
}

/// Remove leftovers of cached models being written (`KEY.tmp-PID.bpk`, KEY hexadecimal) in
/// `dir` from runs no longer running.
pub fn remove_stale_models(dir: &Path) {
    remove_dead(dir, |n| {
        let (key, rest) = n.split_once(".tmp-")?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        pid_in(rest, "", ".bpk")
    });
}

fn remove_dead(dir: &Path, pid_of: impl Fn(&str) -> Option<u32>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = pid_of(&name) else { continue };
        if pid != std::process::id() && !running(pid) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// On Ctrl-C, SIGTERM or SIGHUP: remove every temporary file that exists and exit with
/// 128 + the signal's number (the shells' convention). Call once, early in `main`.
pub fn cleanup_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    std::thread::Builder::new()
        .name("realfill-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Hold the record until exit: no new temporary file is created meanwhile.
                let l = live();
                for p in l.iter() {
                    let _ = fs::remove_file(p);
                }
                eprintln!("\ninterrupted; unfinished files removed");
                std::process::exit(128 + sig);
            }
        })
        .ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("realfill-tempfiles-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_temp_file_is_removed_unless_persisted_and_recorded_while_it_exists() {
        let d = dir("life");
        let (t, _) = Temp::create(d.join("a.tmp")).unwrap();
        assert!(live().contains(&d.join("a.tmp")));
        drop(t);
        assert!(!d.join("a.tmp").exists() && !live().contains(&d.join("a.tmp")));
        let (t, _) = Temp::create(d.join("b.tmp")).unwrap();
        t.persist(&d.join("b.png")).unwrap();
        assert!(d.join("b.png").exists() && !d.join("b.tmp").exists() && !live().contains(&d.join("b.tmp")));
    }

    #[test]
    fn only_realfills_own_leftovers_of_finished_runs_are_removed() {
        let d = dir("stale");
        // A process id that is not running: above the kernel's pid_max.
        let dead = 4_194_400u32;
        let me = std::process::id();
        let names = [
            format!(".out.png.tmp-{dead}"),   // ours, dead: removed
            format!(".out.png.tmp-{me}"),     // ours, running: kept
            format!(".other.png.tmp-{dead}"), // another output's: kept (not asked about)
            format!(".out.png.tmp-{dead}x"),  // not our pattern: kept
            "out.png".to_string(),            // the output itself: kept
            format!("0af3.tmp-{dead}.bpk"),   // a cached model's, dead
            format!("notes.tmp-{dead}.bpk"),  // not hexadecimal: kept
        ];
        for n in &names {
            fs::write(d.join(n), b"x").unwrap();
        }
        remove_stale(&d.join("out.png"));
        remove_stale_models(&d);
        let left: Vec<bool> = names.iter().map(|n| d.join(n).exists()).collect();
        assert_eq!(left, [false, true, true, true, true, false, true]);
    }
}
