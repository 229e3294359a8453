//! Temporary files realfill writes before renaming them into place (results, projects, cached
//! scene models), so that no interruption leaves them behind:
//! - each one is created through `Temp::create`, which records it while it exists;
//! - Ctrl-C, SIGTERM and SIGHUP (`cleanup_on_signals`) remove every recorded one and exit;
//! - a SIGKILL cannot be caught: the next run that writes into the same folder removes the
//!   leftovers of runs that are gone (`remove_stale`) — only names realfill itself makes,
//!   `.NAME.tmp-PID-RAND` beside an output and `KEY.tmp-PID-RAND.bpk` in the model cache
//!   (RAND: 8 hexadecimal digits; older builds wrote none), and only when process PID no
//!   longer runs.
//!
//! A temporary file is always a new file (`O_EXCL`): in a folder others can write to, a
//! symbolic link planted at the name realfill will use is never followed (it would make the
//! result overwrite the file it points to), and the random part means a planted name cannot
//! block the write either.

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
    /// Create a new file in `dir` named `name(suffix)`, where the suffix is `PID-RAND`, and
    /// record it. Never opens an existing file or follows a link there: a name already taken
    /// is tried again with another random part. Creation happens under the record's lock, so
    /// a signal's cleanup either sees the file or runs before it exists.
    pub fn create_new(dir: &Path, name: impl Fn(&str) -> String) -> std::io::Result<(Temp, fs::File)> {
        let mut l = live();
        let mut tries = 0u64;
        loop {
            let mut r = [0u8; 4];
            crate::rng::os_random(&mut r);
            let rand = u32::from_le_bytes(r);
            let path = dir.join(name(&format!("{}-{rand:08x}", std::process::id())));
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => {
                    l.push(path.clone());
                    return Ok((Temp { path }, f));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A new temporary file beside `dest` (`.NAME.tmp-PID-RAND`), where `dest` is written
    /// before it is renamed into place.
    pub fn beside(dest: &Path) -> std::io::Result<(Temp, fs::File)> {
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?
            .to_string_lossy();
        Temp::create_new(dir, |suffix| format!(".{name}.tmp-{suffix}"))
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

/// Bytes `Temp::beside` adds to a file name (a dot, ".tmp-", a process id of up to 10 digits,
/// "-" and 8 random digits).
pub const BESIDE_EXTRA: usize = 25;

/// Whether process `pid` still runs. Unknown (no /proc) counts as running: nothing is removed.
fn running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// The process id in `name` if it has the form `prefix` + digits + (`-` + 8 hexadecimal
/// digits, or nothing) + `suffix`.
fn pid_in(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let digits = match middle.split_once('-') {
        Some((d, rand)) if rand.len() == 8 && rand.bytes().all(|b| b.is_ascii_hexdigit()) => d,
        Some(_) => return None,
        None => middle,
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Remove leftovers of `dest`'s temporary files (`.NAME.tmp-PID-RAND`) from runs no longer
/// running.
pub fn remove_stale(dest: &Path) {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!(".{name}.tmp-");
    remove_dead(dir, |n| pid_in(n, &prefix, ""));
}

/// Remove leftovers of cached models being written (`KEY.tmp-PID-RAND.bpk`, KEY hexadecimal) in
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
        let (t, _) = Temp::beside(&d.join("a.png")).unwrap();
        let p = t.path().to_path_buf();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let rand = name.strip_prefix(&format!(".a.png.tmp-{}-", std::process::id())).unwrap();
        assert!(rand.len() == 8 && rand.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert!(live().contains(&p));
        drop(t);
        assert!(!p.exists() && !live().contains(&p));
        let (t, _) = Temp::beside(&d.join("b.png")).unwrap();
        let p = t.path().to_path_buf();
        t.persist(&d.join("b.png")).unwrap();
        assert!(d.join("b.png").exists() && !p.exists() && !live().contains(&p));
    }

    #[test]
    fn a_link_planted_at_a_temporary_name_is_never_followed() {
        let d = dir("planted");
        let victim = d.join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        // Links at every name this process could use with the old, predictable naming, and at
        // a hundred more: none is opened.
        let me = std::process::id();
        for pid in me..me + 100 {
            std::os::unix::fs::symlink(&victim, d.join(format!(".o.png.tmp-{pid}"))).unwrap();
        }
        let (t, mut f) = Temp::beside(&d.join("o.png")).unwrap();
        std::io::Write::write_all(&mut f, b"result").unwrap();
        t.persist(&d.join("o.png")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(d.join("o.png")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(d.join("o.png")).unwrap(), b"result");
        // And a link at the very name chosen is not opened either (exclusive creation): with
        // every try's name taken by a link, creation fails and the victim is untouched.
        std::os::unix::fs::symlink(&victim, d.join("fixed")).unwrap();
        let e = Temp::create_new(&d, |_| "fixed".into()).err().expect("a planted name is not opened");
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn only_realfills_own_leftovers_of_finished_runs_are_removed() {
        let d = dir("stale");
        // A process id that is not running: above the kernel's pid_max.
        let dead = 4_194_400u32;
        let me = std::process::id();
        let names = [
            format!(".out.png.tmp-{dead}"),          // ours (older builds), dead: removed
            format!(".out.png.tmp-{me}"),            // ours, running: kept
            format!(".out.png.tmp-{dead}-0a1b2c3d"), // ours, dead: removed
            format!(".out.png.tmp-{dead}-xyz"),      // not our pattern: kept
            format!(".other.png.tmp-{dead}"),        // another output's: kept (not asked about)
            format!(".out.png.tmp-{dead}x"),         // not our pattern: kept
            "out.png".to_string(),                   // the output itself: kept
            format!("0af3.tmp-{dead}.bpk"),          // a cached model's, dead
            format!("0af4.tmp-{dead}-89abcdef.bpk"), // a cached model's, dead
            format!("notes.tmp-{dead}.bpk"),         // not hexadecimal: kept
        ];
        for n in &names {
            fs::write(d.join(n), b"x").unwrap();
        }
        remove_stale(&d.join("out.png"));
        remove_stale_models(&d);
        let left: Vec<bool> = names.iter().map(|n| d.join(n).exists()).collect();
        assert_eq!(left, [false, true, false, true, true, true, true, false, false, true]);
    }
}
