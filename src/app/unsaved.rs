//! No lost work (issue 15): the document remembers the revision last saved in a project; the
//! window title shows the file's name and a modified mark; closing the window, or opening
//! another photo or project over a modified document, first asks "save changes?" — Save
//! project… (then goes on once saved), Don't save, Keep editing. Export does not count as saving
//! (the mask and the references live only in the project), as in other photo editors.

use std::path::PathBuf;

use super::document::Document;
use super::tasks::OpenedProject;
use crate::scene::Photo;

/// What waits for the person's answer.
pub enum Pending {
    /// The window was asked to close.
    Close,
    /// A photo that was opened, to replace the document.
    Photo(Box<Photo>),
    /// A project that was opened, to replace the document.
    Project(Box<OpenedProject>),
}

/// The prompt's answer that the app carries out.
pub enum Reply {
    /// Save the project (where it was saved, else ask where); what waited goes on once saved.
    Save,
    /// Go on without saving.
    Discard(Pending),
}

/// The document's project file and whether it holds every change.
#[derive(Default)]
pub struct Saving {
    /// Project file of this document, if saved or opened as one.
    pub(super) project_path: Option<PathBuf>,
    /// The document revision a project last saved (documents start at 0, saved or fresh).
    pub(super) saved_revision: u64,
    /// What waits for the answer to "save changes?", and what waits for a project save.
    pub(super) pending: Option<Pending>,
    pub(super) after_save: Option<Pending>,
    /// The person chose to close without saving.
    pub(super) close_confirmed: bool,
}

impl Saving {
    /// Whether `doc` has changes no project holds.
    pub fn is_modified(&self, doc: Option<&Document>) -> bool {
        doc.is_some_and(|d| d.revision != self.saved_revision)
    }

    /// Whether replacing or closing `doc` must ask first.
    pub fn must_ask(&self, doc: Option<&Document>) -> bool {
        self.is_modified(doc) && !self.close_confirmed
    }

    /// A document was opened at `revision`, from the project `path` if it is one.
    pub fn opened(&mut self, revision: u64, path: Option<PathBuf>) {
        self.saved_revision = revision;
        self.project_path = path;
    }

    /// A project was saved at `revision`: what waited for the save, to carry out now.
    pub fn saved_at(&mut self, revision: u64) -> Option<Pending> {
        self.saved_revision = revision;
        self.after_save.take()
    }

    /// The name the title and the prompt use: the project's, else the photo's.
    fn document_name(&self, doc: Option<&Document>) -> String {
        let path = self.project_path.clone().or_else(|| doc.map(|d| d.target.path.clone()));
        path.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "untitled".into())
    }

    /// The window title: "NAME • — realfill" when modified, `progress` (a job's) first.
    pub fn title(&self, doc: Option<&Document>, progress: &str) -> String {
        if doc.is_none() {
            return "realfill".into();
        }
        let mark = if self.is_modified(doc) { " •" } else { "" };
        format!("{progress}{}{mark} — realfill", self.document_name(doc))
    }

    /// The window's close button, the system's close request or Quit: true when it may close
    /// now, else the prompt asks first.
    pub fn request_close(&mut self, ctx: &egui::Context, doc: Option<&Document>) -> bool {
        if self.must_ask(doc) {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.pending = Some(Pending::Close);
            return false;
        }
        true
    }

    /// The prompt, while something waits for an answer; the answer, once given, if the app
    /// has something to do.
    pub fn prompt(&mut self, ui: &mut egui::Ui, doc: Option<&Document>) -> Option<Reply> {
        let p = self.pending.as_ref()?;
        let what = match p {
            Pending::Close => "before closing",
            Pending::Photo(_) | Pending::Project(_) => "before opening another",
        };
        let name = self.document_name(doc);
        let mut answer = None;
        egui::Modal::new(egui::Id::unique("unsaved-changes")).show(ui.ctx(), |ui| {
            ui.heading(format!("Save changes to {name} {what}?"));
            ui.label("The mask, the canvas extension or a fill are not saved in a project.");
            ui.horizontal(|ui| {
                if ui.button("Save project…").clicked() {
                    answer = Some(Answer::Save);
                }
                if ui.button("Don't save").clicked() {
                    answer = Some(Answer::Discard);
                }
                if ui.button("Keep editing").clicked() || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                    answer = Some(Answer::Cancel);
                }
            });
        });
        let answer = answer?;
        let p = self.pending.take()?;
        match answer {
            Answer::Save => {
                self.after_save = Some(p);
                Some(Reply::Save)
            }
            Answer::Discard => {
                if matches!(p, Pending::Close) {
                    self.close_confirmed = true;
                }
                Some(Reply::Discard(p))
            }
            Answer::Cancel => {
                // A photo or project loaded for nothing: freed off the UI thread.
                std::thread::spawn(move || drop(p));
                None
            }
        }
    }
}

enum Answer {
    Save,
    Discard,
    Cancel,
}
