//! realfill's own file dialog, for desktops where the system's (the XDG desktop portal, or
//! zenity) does not answer: bare X, i3, minimal Wayland compositors. The same choices as the
//! system dialog (open one photo, add several, save under a name, pick a folder), drawn in the
//! window. (egui-file-dialog, the maintained crate for this, is built on egui 0.36 in its
//! latest release; realfill is on 0.37.)

use std::path::{Path, PathBuf};

use egui::{Key, RichText};

use super::dialogs::{Dialog, Pick};

/// One entry of the folder shown.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    is_dir: bool,
}

pub struct FileBrowser {
    pub kind: Dialog,
    folder: PathBuf,
    /// What the folder field shows (edited freely; Enter goes there).
    folder_text: String,
    entries: Vec<Entry>,
    /// Why the folder could not be listed.
    error: Option<String>,
    /// Indices into `entries` of the chosen files.
    selected: Vec<usize>,
    /// The file name to save under.
    name: String,
}

/// What the person did with the dialog this frame.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Open,
    Cancelled,
    Chosen(Vec<PathBuf>),
}

impl FileBrowser {
    /// Start in `start` (the last folder used; the home folder, else the current one, when
    /// it is gone), with `name` in the save field.
    pub fn new(kind: Dialog, start: Option<PathBuf>, name: Option<String>) -> FileBrowser {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let folder = [start, home, std::env::current_dir().ok()]
            .into_iter()
            .flatten()
            .find(|p| p.is_dir())
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut b = FileBrowser {
            kind,
            folder_text: String::new(),
            folder: PathBuf::new(),
            entries: Vec::new(),
            error: None,
            selected: Vec::new(),
            name: name.unwrap_or_default(),
        };
        b.go(folder);
        b
    }

    /// The folder listed.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Show `folder`: its sub-folders, then the files the dialog's kind takes, by name; hidden
    /// ones left out. A folder that cannot be read keeps the listing empty and says why.
    pub fn go(&mut self, folder: PathBuf) {
        self.folder_text = folder.display().to_string();
        self.selected.clear();
        self.entries.clear();
        self.error = None;
        match std::fs::read_dir(&folder) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    // The listing's own file type (no stat per entry on the UI thread); a link
                    // is followed, so a linked folder is a folder.
                    let is_dir = match e.file_type() {
                        Ok(t) if t.is_symlink() => e.path().is_dir(),
                        Ok(t) => t.is_dir(),
                        Err(_) => false,
                    };
                    if is_dir || (self.kind.pick() != Pick::Folder && self.kind.accepts(Path::new(&name))) {
                        self.entries.push(Entry { name, is_dir });
                    }
                }
                self.entries.sort_by(|a, b| {
                    b.is_dir.cmp(&a.is_dir).then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
                });
            }
            Err(e) => self.error = Some(format!("cannot read {}: {e}", folder.display())),
        }
        self.folder = folder;
    }

    /// The paths the primary button would return now (None: nothing to return yet).
    fn choice(&self) -> Option<Vec<PathBuf>> {
        match self.kind.pick() {
            Pick::Folder => Some(vec![self.folder.clone()]),
            Pick::Save => {
                let name = self.name.trim();
                (!name.is_empty()).then(|| vec![self.folder.join(name)])
            }
            Pick::One | Pick::Many => {
                let files: Vec<PathBuf> = self
                    .selected
                    .iter()
                    .filter(|&&i| !self.entries[i].is_dir)
                    .map(|&i| self.folder.join(&self.entries[i].name))
                    .collect();
                (!files.is_empty()).then_some(files)
            }
        }
    }

    /// Enter in the path field: a folder is shown; a file is taken as people type one into a
    /// system dialog — a photo to open is chosen at once, a name to save under goes into the
    /// name field (Save still confirms), its folder shown either way. A path that is neither
    /// is shown as a folder, which says why it cannot be read.
    fn typed(&mut self, path: PathBuf) -> Option<Vec<PathBuf>> {
        let folder = path.parent().filter(|d| !d.as_os_str().is_empty() && d.is_dir()).map(Path::to_path_buf);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match (path.is_dir(), folder, name) {
            (false, Some(folder), Some(name)) => {
                self.go(folder);
                match self.kind.pick() {
                    Pick::Save => self.name = name,
                    Pick::One | Pick::Many if path.is_file() => {
                        if self.kind.accepts(&path) {
                            return Some(vec![path]);
                        }
                        self.error = Some(format!("{} is not a file this dialog opens", path.display()));
                    }
                    _ => {}
                }
                None
            }
            _ => {
                self.go(path);
                None
            }
        }
    }

    fn click(&mut self, i: usize, toggle: bool) {
        let e = &self.entries[i];
        if self.kind.pick() == Pick::Save && !e.is_dir {
            self.name = e.name.clone();
        }
        if toggle && self.kind.pick() == Pick::Many && !e.is_dir {
            match self.selected.iter().position(|&s| s == i) {
                Some(k) => {
                    self.selected.remove(k);
                }
                None => self.selected.push(i),
            }
        } else {
            self.selected = vec![i];
        }
    }

    /// Draw the dialog as a window over the app.
    pub fn show(&mut self, ctx: &egui::Context) -> Outcome {
        let mut outcome = Outcome::Open;
        let mut go_to: Option<PathBuf> = None;
        let mut open = true;
        egui::Window::new(self.kind.title())
            .id(egui::Id::unique("realfill file dialog"))
            .collapsible(false)
            .resizable(true)
            .default_size([560.0, 420.0])
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .open(&mut open)
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    if ui.button("Up").on_hover_text("The folder above").clicked()
                        && let Some(p) = self.folder.parent()
                    {
                        go_to = Some(p.to_path_buf());
                    }
                    if ui.button("Home").clicked()
                        && let Some(h) = std::env::var_os("HOME")
                    {
                        go_to = Some(PathBuf::from(h));
                    }
                    let field = ui.add(
                        egui::TextEdit::singleline(&mut self.folder_text)
                            .desired_width(f32::INFINITY)
                            .hint_text("folder"),
                    );
                    if field.lost_focus()
                        && ui.input(|i| i.key_pressed(Key::Enter))
                        && let Some(c) = self.typed(PathBuf::from(self.folder_text.trim()))
                    {
                        outcome = Outcome::Chosen(c);
                    }
                });
                if let Some(err) = &self.error {
                    ui.label(RichText::new(err).color(egui::Color32::from_rgb(255, 110, 110)));
                }
                let list_height = (ui.available_height() - 70.0).max(120.0);
                egui::ScrollArea::vertical().max_height(list_height).auto_shrink([false, false]).show(ui, |ui| {
                    if self.entries.is_empty() && self.error.is_none() {
                        ui.label(RichText::new(self.kind.empty_text()).weak());
                    }
                    for i in 0..self.entries.len() {
                        let e = &self.entries[i];
                        let text = if e.is_dir { format!("{}/", e.name) } else { e.name.clone() };
                        let r = ui.selectable_label(self.selected.contains(&i), text);
                        if r.clicked() && self.entries[i].is_dir {
                            // One click opens a folder (a folder dialog chooses the folder shown).
                            go_to = Some(self.folder.join(&self.entries[i].name));
                        } else if r.double_clicked() && self.selected.contains(&i) {
                            // (The first click selected it: a double click that began on a
                            // folder row, which opened at the first click, is no choice.)
                            self.selected = vec![i];
                            if let Some(c) = self.choice() {
                                outcome = Outcome::Chosen(c);
                            }
                        } else if r.clicked() {
                            let toggle = ui.input(|i| i.modifiers.command || i.modifiers.shift);
                            self.click(i, toggle);
                        }
                    }
                });
                if self.kind.pick() == Pick::Save {
                    ui.horizontal(|ui| {
                        ui.label("File name");
                        let r = ui.add(egui::TextEdit::singleline(&mut self.name).desired_width(f32::INFINITY));
                        if r.lost_focus()
                            && ui.input(|i| i.key_pressed(Key::Enter))
                            && let Some(c) = self.choice()
                        {
                            outcome = Outcome::Chosen(c);
                        }
                    });
                }
                ui.horizontal(|ui| {
                    let choice = self.choice();
                    if ui.add_enabled(choice.is_some(), egui::Button::new(self.kind.verb())).clicked()
                        && let Some(c) = choice
                    {
                        outcome = Outcome::Chosen(c);
                    }
                    if ui.button("Cancel").clicked() {
                        outcome = Outcome::Cancelled;
                    }
                    if self.kind.pick() == Pick::Many {
                        ui.label(RichText::new("Ctrl+click or Shift+click chooses several").weak());
                    }
                });
            });
        if !open || ctx.input(|i| i.key_pressed(Key::Escape)) {
            outcome = Outcome::Cancelled;
        }
        if let Some(p) = go_to {
            self.go(p);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_with(files: &[&str]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("realfill-browser-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in files {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        dir
    }

    #[test]
    fn lists_folders_first_then_the_files_the_kind_takes() {
        let dir = folder_with(&["b.JPG", "a.png", "notes.txt", ".hidden.png", "scene.realfill"]);
        let b = FileBrowser::new(Dialog::OpenPhoto, Some(dir.clone()), None);
        let names: Vec<&str> = b.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["sub", "a.png", "b.JPG"]);
        let p = FileBrowser::new(Dialog::OpenProject, Some(dir.clone()), None);
        assert_eq!(p.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["sub", "scene.realfill"]);
        let f = FileBrowser::new(Dialog::SdModel, Some(dir), None);
        assert_eq!(f.entries.len(), 1, "a folder dialog lists folders only");
    }

    #[test]
    fn choices_follow_the_kind() {
        let dir = folder_with(&["a.png", "b.png"]);
        let mut one = FileBrowser::new(Dialog::OpenPhoto, Some(dir.clone()), None);
        assert_eq!(one.choice(), None, "nothing chosen yet");
        one.click(1, false);
        one.click(2, true);
        assert_eq!(one.choice(), Some(vec![dir.join("b.png")]), "one photo: the last click");
        let mut many = FileBrowser::new(Dialog::AddReferences, Some(dir.clone()), None);
        many.click(1, false);
        many.click(2, true);
        assert_eq!(many.choice(), Some(vec![dir.join("a.png"), dir.join("b.png")]));
        many.click(0, false);
        assert_eq!(many.choice(), None, "a folder is not a photo");
        let mut save = FileBrowser::new(Dialog::Export, Some(dir.clone()), Some("out.png".into()));
        assert_eq!(save.choice(), Some(vec![dir.join("out.png")]));
        save.click(2, false);
        assert_eq!(save.choice(), Some(vec![dir.join("b.png")]), "clicking a file takes its name");
        save.name = "  ".into();
        assert_eq!(save.choice(), None);
        let mut folder = FileBrowser::new(Dialog::SdModel, Some(dir.clone()), None);
        assert_eq!(folder.choice(), Some(vec![dir.clone()]), "the folder shown");
        folder.go(dir.join("sub"));
        assert_eq!(folder.choice(), Some(vec![dir.join("sub")]));
    }

    #[test]
    fn a_typed_file_path_is_taken_as_a_system_dialog_takes_it() {
        let dir = folder_with(&["a.png", "notes.txt"]);
        let mut open = FileBrowser::new(Dialog::OpenPhoto, None, None);
        assert_eq!(open.typed(dir.join("a.png")), Some(vec![dir.join("a.png")]), "a photo is opened at once");
        assert_eq!(open.typed(dir.join("notes.txt")), None);
        assert_eq!(open.folder(), dir, "its folder is shown");
        assert!(open.error.as_deref().is_some_and(|e| e.contains("notes.txt")), "{:?}", open.error);
        assert_eq!(open.typed(dir.join("sub")), None);
        assert_eq!(open.folder(), dir.join("sub"), "a folder is shown");
        let mut save = FileBrowser::new(Dialog::Export, None, Some("photo-filled.png".into()));
        assert_eq!(save.typed(dir.join("new.jpg")), None, "Save confirms");
        assert_eq!(save.choice(), Some(vec![dir.join("new.jpg")]));
        let mut gone = FileBrowser::new(Dialog::OpenPhoto, None, None);
        assert_eq!(gone.typed(PathBuf::from("/no/such/folder/a.png")), None);
        assert!(gone.error.is_some(), "a path that is neither says why");
    }

    #[test]
    fn an_unreadable_folder_says_why_and_a_missing_start_falls_back() {
        let mut b = FileBrowser::new(Dialog::OpenPhoto, Some(PathBuf::from("/no/such/folder")), None);
        assert!(b.folder().is_dir(), "started in an existing folder: {}", b.folder().display());
        b.go(PathBuf::from("/no/such/folder"));
        let e = b.error.clone().unwrap();
        assert!(e.contains("/no/such/folder"), "{e}");
        assert!(b.entries.is_empty());
    }
}
