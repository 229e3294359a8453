//! Which file dialog the app shows: the system's (XDG desktop portal, else zenity, through rfd
//! on a task thread) until it has none that answers, then realfill's own (`file_browser`) for
//! the rest of the session. Both return what was chosen as a `Task::Dialog`.

use std::path::PathBuf;

use super::dialogs::{Dialog, Pick};
use super::file_browser::{FileBrowser, Outcome};
use super::tasks::{Task, Tasks};

pub struct FileDialogs {
    /// Ask the system for file dialogs; off once it had none that answered (then, and in
    /// tests, realfill's own dialog is used).
    pub(super) system: bool,
    /// realfill's own file dialog, while it is open.
    pub(super) browser: Option<FileBrowser>,
}

impl Default for FileDialogs {
    fn default() -> Self {
        FileDialogs { system: true, browser: None }
    }
}

impl FileDialogs {
    /// Open a dialog of `kind` in the folder `start`, with `name` filled in (saving).
    pub fn open(&mut self, kind: Dialog, start: Option<PathBuf>, name: Option<String>, tasks: &mut Tasks) {
        if self.system {
            tasks.spawn(system_dialog(kind, start, name));
        } else {
            self.browser = Some(FileBrowser::new(kind, start, name));
        }
    }

    /// The system's dialog did not answer: realfill's own opens in its place, and from now on.
    pub fn fall_back(&mut self, kind: Dialog, start: Option<PathBuf>, name: Option<String>) {
        self.system = false;
        self.browser = Some(FileBrowser::new(kind, start, name));
    }

    /// realfill's own dialog, while open; what it returns, once closed, goes where the
    /// system's would.
    pub fn show(&mut self, ctx: &egui::Context) -> Option<Task> {
        let b = self.browser.as_mut()?;
        let kind = b.kind;
        let paths = match b.show(ctx) {
            Outcome::Open => return None,
            Outcome::Cancelled => None,
            Outcome::Chosen(p) => Some(p),
        };
        self.browser = None;
        Some(Task::Dialog(kind, paths))
    }
}

/// The system's file dialog (XDG desktop portal, else zenity). Where neither answers, rfd
/// returns None as for a cancel: `portal_log` tells the two apart, and the app then opens its
/// own dialog (`file_browser`).
fn system_dialog(kind: Dialog, start: Option<PathBuf>, name: Option<String>) -> impl FnOnce() -> Task + Send + 'static {
    move || {
        let mut d = rfd::FileDialog::new().set_title(kind.title());
        if let Some(s) = &start {
            d = d.set_directory(s);
        }
        if let Some(n) = &name {
            d = d.set_file_name(n);
        }
        for (label, exts) in kind.filters() {
            d = d.add_filter(label, exts);
        }
        let (paths, failure) = super::portal_log::watch(|| match kind.pick() {
            Pick::One => d.pick_file().map(|p| vec![p]),
            Pick::Many => d.pick_files(),
            Pick::Save => d.save_file().map(|p| vec![p]),
            Pick::Folder => d.pick_folder().map(|p| vec![p]),
        });
        match (paths, failure) {
            (None, Some(why)) => Task::DialogUnavailable(kind, start, name, why),
            (paths, _) => Task::Dialog(kind, paths),
        }
    }
}
