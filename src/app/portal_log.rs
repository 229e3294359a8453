//! Tells a file dialog that could not be shown from one the person cancelled. rfd returns None
//! for both; when neither the XDG desktop portal nor zenity answers it logs why (through the
//! `log` crate) before returning. This logger keeps rfd's errors of the calling thread so that
//! [`watch`] can say which it was; every other record is ignored, as without a logger.

use std::cell::RefCell;

struct PortalLog;

thread_local! {
    /// rfd's error messages on this thread since `watch` began.
    static ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

impl log::Log for PortalLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Error && m.target().starts_with("rfd")
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            ERRORS.with(|e| e.borrow_mut().push(r.args().to_string()));
        }
    }

    fn flush(&self) {}
}

/// Install the logger (once; a program that set its own keeps it, and then every dialog that
/// returns nothing counts as cancelled).
pub fn install() {
    static LOGGER: PortalLog = PortalLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Error);
    }
}

/// Run a dialog; also return why no dialog could be shown, when rfd's last fallback (zenity)
/// failed during it.
pub fn watch<T>(dialog: impl FnOnce() -> T) -> (T, Option<String>) {
    install();
    ERRORS.with(|e| e.borrow_mut().clear());
    let out = dialog();
    let errors = ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    // The portal's failure alone is not final: zenity may still have shown a dialog.
    let failed = errors.iter().any(|m| m.contains("zenity"));
    (out, failed.then(|| errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_last_fallback_counts() {
        let ((), why) = watch(|| {
            log::error!(target: "rfd::backend", "OpenFile failed: no portal");
            log::error!(target: "rfd::backend", "Failed to pick file with zenity: No such file or directory");
        });
        let why = why.expect("no dialog could be shown");
        assert!(why.contains("no portal") && why.contains("zenity"), "{why}");
        // The portal failed but zenity showed a dialog (then cancelled): a cancel.
        let ((), why) = watch(|| log::error!(target: "rfd::backend", "OpenFile failed: no portal"));
        assert_eq!(why, None);
        // Other crates' errors are not rfd's.
        let ((), why) = watch(|| log::error!(target: "other", "zenity"));
        assert_eq!(why, None);
    }
}
