//! Tells a file dialog that could not be shown from one the person cancelled. rfd returns None
//! for both; when neither the XDG desktop portal nor zenity can be started it logs why
//! (through the `log` crate) before returning. This logger keeps rfd's errors of the calling
//! thread, and whether it fell back to zenity, so that [`watch`] can say which it was; every
//! other record is ignored, as without a logger. A zenity that starts but fails (no display it
//! can open, a broken GTK) exits with an error that rfd reads as a cancel and does not log:
//! such a zenity returns at once, faster than a person cancels (`AT_ONCE`).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

struct PortalLog;

thread_local! {
    /// rfd's error messages on this thread since `watch` began.
    static ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Whether rfd fell back to zenity on this thread since `watch` began.
    static ZENITY: Cell<bool> = const { Cell::new(false) };
}

/// A dialog that returned nothing sooner than this after zenity was started showed none: a
/// person takes longer to see a dialog and cancel it (zenity's own start is ≈ 0.1 s).
const AT_ONCE: Duration = Duration::from_millis(300);

impl log::Log for PortalLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn && m.target().starts_with("rfd")
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let text = r.args().to_string();
        if r.level() == log::Level::Error {
            ERRORS.with(|e| e.borrow_mut().push(text));
        } else if text.contains("zenity fallback") {
            ZENITY.with(|z| z.set(true));
        }
    }

    fn flush(&self) {}
}

/// Install the logger (once; a program that set its own keeps it, and then every dialog that
/// returns nothing counts as cancelled).
pub fn install() {
    static LOGGER: PortalLog = PortalLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Run a dialog; also return why no dialog could be shown, when rfd's last fallback (zenity)
/// could not be started, or returned nothing at once.
pub fn watch<T>(dialog: impl FnOnce() -> Option<T>) -> (Option<T>, Option<String>) {
    install();
    ERRORS.with(|e| e.borrow_mut().clear());
    ZENITY.with(|z| z.set(false));
    let started = Instant::now();
    let out = dialog();
    let errors = ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    let zenity = ZENITY.with(|z| z.get());
    let why = unavailable(&errors, zenity && out.is_none(), started.elapsed());
    (out, why)
}

/// Why no dialog was shown, from rfd's errors, whether zenity was started and returned
/// nothing, and how long the dialog took; None for a dialog shown (and chosen or cancelled).
fn unavailable(errors: &[String], zenity_gave_nothing: bool, took: Duration) -> Option<String> {
    // The portal's failure alone is not final: zenity may still have shown a dialog.
    if errors.iter().any(|m| m.contains("zenity")) {
        return Some(errors.join("; "));
    }
    (zenity_gave_nothing && took < AT_ONCE).then(|| {
        let mut why = errors.to_vec();
        why.push(format!("zenity returned nothing after {} ms: it could not show a dialog", took.as_millis()));
        why.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_last_fallback_counts() {
        let (_, why) = watch(|| {
            log::error!(target: "rfd::backend", "OpenFile failed: no portal");
            log::error!(target: "rfd::backend", "Failed to pick file with zenity: No such file or directory");
            None::<()>
        });
        let why = why.expect("no dialog could be shown");
        assert!(why.contains("no portal") && why.contains("zenity"), "{why}");
        // The portal failed but zenity showed a dialog (then cancelled): a cancel.
        let (_, why) = watch(|| {
            log::error!(target: "rfd::backend", "OpenFile failed: no portal");
            log::warn!(target: "rfd::backend", "Using zenity fallback");
            std::thread::sleep(AT_ONCE + Duration::from_millis(50));
            None::<()>
        });
        assert_eq!(why, None);
        // Other crates' errors are not rfd's.
        let (_, why) = watch(|| {
            log::error!(target: "other", "zenity");
            None::<()>
        });
        assert_eq!(why, None);
    }

    #[test]
    fn a_zenity_that_returns_nothing_at_once_showed_no_dialog() {
        // zenity started, exited with an error (rfd reads it as a cancel and logs nothing).
        let (out, why) = watch(|| {
            log::error!(target: "rfd::backend", "OpenFile failed: no portal");
            log::warn!(target: "rfd::backend", "Using zenity fallback");
            None::<()>
        });
        assert!(out.is_none());
        let why = why.expect("no dialog could be shown");
        assert!(why.contains("no portal") && why.contains("could not show a dialog"), "{why}");
        // What zenity chose counts however fast it came (a path given on its command line).
        let (out, why) = watch(|| {
            log::warn!(target: "rfd::backend", "Using zenity fallback");
            Some(1)
        });
        assert_eq!((out, why), (Some(1), None));
    }
}
