//! No lost work (issue 15): the document remembers the revision last saved in a project; the
//! window title shows the file's name and a modified mark; closing the window, or opening
//! another photo or project over a modified document, first asks "save changes?" — Save
//! project… (then goes on once saved), Don't save, Keep editing. Export does not count as saving
//! (the mask and the references live only in the project), as in other photo editors.

use super::RealfillApp;
use super::dialogs::Dialog;
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

impl RealfillApp {
    /// Whether the document has changes no project holds.
    pub fn is_modified(&self) -> bool {
        self.doc.as_ref().is_some_and(|d| d.revision != self.saved_revision)
    }

    /// The name the title and the prompt use: the project's, else the photo's.
    fn document_name(&self) -> String {
        let path = self.project_path.clone().or_else(|| self.doc.as_ref().map(|d| d.target.path.clone()));
        path.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "untitled".into())
    }

    /// The window title: "NAME • — realfill" when modified, learning progress first.
    pub fn title(&self) -> String {
        if self.doc.is_none() {
            return "realfill".into();
        }
        let mark = if self.is_modified() { " •" } else { "" };
        let l = &self.learning;
        let progress = match &self.running {
            Some(super::Running::Learn) if l.total > 0 => format!("learning {}/{} — ", l.step, l.total),
            Some(super::Running::Fill { .. }) => "filling — ".into(),
            _ => String::new(),
        };
        format!("{progress}{}{mark} — realfill", self.document_name())
    }

    /// A photo was opened (file, drop, paste): it replaces the document, asking first if the
    /// document has unsaved changes.
    pub fn photo_opened(&mut self, p: Photo) {
        self.after_asking(Pending::Photo(Box::new(p)));
    }

    /// A project was opened: the same.
    pub fn project_opened(&mut self, o: OpenedProject) {
        self.after_asking(Pending::Project(Box::new(o)));
    }

    /// Carry out `p` now if nothing would be lost, else ask first.
    pub fn after_asking(&mut self, p: Pending) {
        if self.is_modified() && !self.close_confirmed {
            self.pending = Some(p);
        } else {
            self.carry_out(p);
        }
    }

    /// The window's close button, the system's close request or Quit: true when it may close
    /// now, else the prompt asks first.
    pub fn request_close(&mut self, ctx: &egui::Context) -> bool {
        if self.is_modified() && !self.close_confirmed {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.pending = Some(Pending::Close);
            return false;
        }
        true
    }

    fn carry_out(&mut self, p: Pending) {
        match p {
            Pending::Close => {
                self.close_confirmed = true;
                if let Some(ctx) = &self.repaint_handle {
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                }
            }
            Pending::Photo(photo) => self.open_target(*photo),
            Pending::Project(o) => self.open_project_now(*o),
        }
    }

    /// The person chose to close without saving (or saved first): the window may close.
    pub fn close_confirmed(&self) -> bool {
        self.close_confirmed
    }

    /// What waits for an answer, if anything (for tests and the prompt).
    pub fn pending(&self) -> Option<&Pending> {
        self.pending.as_ref()
    }

    /// A project was saved at `revision`: carry out what waited for it.
    pub(super) fn saved_at(&mut self, revision: u64) {
        self.saved_revision = revision;
        if let Some(p) = self.after_save.take() {
            self.carry_out(p);
        }
    }

    /// The prompt, while something waits for an answer.
    pub fn prompt(&mut self, ui: &mut egui::Ui) {
        let Some(p) = &self.pending else { return };
        let what = match p {
            Pending::Close => "before closing",
            Pending::Photo(_) | Pending::Project(_) => "before opening another",
        };
        let name = self.document_name();
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
        let Some(answer) = answer else { return };
        let Some(p) = self.pending.take() else { return };
        match answer {
            Answer::Save => {
                self.after_save = Some(p);
                match self.project_path.clone() {
                    Some(path) => self.save_project(path),
                    None => self.open_dialog(Dialog::SaveProject),
                }
            }
            Answer::Discard => {
                if matches!(p, Pending::Close) {
                    self.close_confirmed = true;
                }
                self.carry_out(p);
            }
            Answer::Cancel => {
                // A photo or project loaded for nothing: freed off the UI thread.
                std::thread::spawn(move || drop(p));
            }
        }
    }
}

enum Answer {
    Save,
    Discard,
    Cancel,
}
