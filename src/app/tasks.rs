//! Work the UI thread hands off so that it never blocks: file dialogs (the XDG portal may take
//! seconds), decoding photos, encoding exports, reading and writing projects. Each task runs
//! on its own short-lived thread and returns a `Task` that the next frame applies.

use std::path::PathBuf;
use std::sync::Arc;

use super::RealfillApp;
use super::dialogs::{Dialog, Pick};
use super::document::{Document, PaintMask};
use crate::error::{Error, Result};
use crate::scene::Photo;
use crate::scene::io::{load_photo, load_reference, same_file, save_atomic, save_with};
use crate::scene::project::Project;

pub struct OpenedProject {
    pub path: PathBuf,
    pub project: Project,
    pub target: Photo,
    pub refs: Vec<Photo>,
}

/// A job's scene and its fill region's bounding box (`Mask::bbox`).
pub type SceneResult = Result<(crate::scene::Scene, Option<(usize, usize, usize, usize)>)>;

#[allow(clippy::large_enum_variant, reason = "a few per user action, moved once through a channel")]
pub enum Task {
    /// A dialog closed: the chosen paths (None = cancelled).
    Dialog(Dialog, Option<Vec<PathBuf>>),
    /// The system has no file dialog that answered (why, as rfd said): the app shows its own,
    /// from the same folder and with the same name.
    DialogUnavailable(Dialog, Option<PathBuf>, Option<String>, String),
    Target(Result<Photo>),
    References(Vec<Result<Photo>>),
    Project(Result<OpenedProject>),
    /// Something done that the person is told of (or why not).
    Note(Result<String>),
    /// A file was written (what, where) or not.
    Saved(&'static str, Result<PathBuf>),
    /// The clipboard's image, read for a paste.
    Pasted(super::clipboard::PasteAs, Result<Photo>),
    /// A mask image was read for the document.
    Mask(PathBuf, Result<crate::scene::Mask>),
    /// A project was saved (of the document at this revision); the target had to be written
    /// beside it first (its new path).
    ProjectSaved(Result<(PathBuf, Option<PathBuf>)>, u64),
    /// The scene for a Learn or Fill the person asked for (built off the UI thread: on a
    /// camera photo the full-resolution mask takes hundreds of milliseconds).
    Scene(super::JobKind, SceneResult),
}

/// The system's file dialog (XDG desktop portal, else zenity). Where neither answers, rfd
/// returns None as for a cancel: `portal_log` tells the two apart, and the app then opens its
/// own dialog (`file_browser`).
pub fn dialog(kind: Dialog, start: Option<PathBuf>, name: Option<String>) -> impl FnOnce() -> Task + Send + 'static {
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

pub fn load_target(path: PathBuf) -> impl FnOnce() -> Task + Send + 'static {
    move || Task::Target(load_photo(&path))
}

/// Load references, downscaled to what a fill of a `canvas`-sized photo uses
/// (`budget::reference_long_side`; any size while no photo is open).
pub fn load_refs(paths: Vec<PathBuf>, canvas: Option<(usize, usize)>) -> impl FnOnce() -> Task + Send + 'static {
    let long_side = canvas.map(crate::engine::budget::reference_long_side).unwrap_or(usize::MAX);
    move || Task::References(paths.iter().map(|p| load_reference(p, long_side)).collect())
}

pub fn open_project(path: PathBuf) -> impl FnOnce() -> Task + Send + 'static {
    move || {
        Task::Project((|| {
            let project = Project::load(&path)?;
            let missing = project.missing_files();
            if !missing.is_empty() {
                return Err(Error::input(
                    &path,
                    format!(
                        "points at images that were moved or deleted: {}; put them back or edit the paths in the file",
                        missing.join(", ")
                    ),
                ));
            }
            let target = load_photo(&project.target)?;
            if let Some(m) = &project.mask
                && (m.width, m.height) != (target.width(), target.height())
            {
                return Err(Error::input(
                    &path,
                    format!(
                        "its mask is {}×{} but the target {} is now {}×{}; the photo was changed since the project was saved",
                        m.width,
                        m.height,
                        project.target.display(),
                        target.width(),
                        target.height()
                    ),
                ));
            }
            let canvas = project.extension.canvas(target.width(), target.height());
            let long_side = crate::engine::budget::reference_long_side(canvas);
            let refs = project.references.iter().map(|r| load_reference(r, long_side)).collect::<Result<Vec<_>>>()?;
            Ok(OpenedProject { path: path.clone(), project, target, refs })
        })())
    }
}

impl RealfillApp {
    /// Open a recent file: a project or a photo, by its extension.
    pub fn open_recent(&mut self, path: PathBuf) {
        if path.extension().is_some_and(|e| e == crate::scene::project::EXTENSION) {
            self.spawn(open_project(path));
        } else {
            self.spawn(load_target(path));
        }
    }

    /// Replace the document with an opened project (after `unsaved` asked, if it had to).
    pub(super) fn open_project_now(&mut self, o: OpenedProject) {
        self.forget_previous_notes();
        // A project brings its own references.
        self.refs_offer = None;
        self.handover = None;
        let mut doc = Document::new(o.target);
        if let Some(m) = &o.project.mask
            && let Ok(pm) = PaintMask::from_rle(m)
        {
            doc.mask = pm;
        }
        doc.extension = o.project.extension;
        doc.refs = o.refs.into_iter().map(Arc::new).collect();
        self.settings.run = o.project.settings.clone();
        self.saved_revision = doc.revision;
        if let Some(old) = self.doc.replace(doc) {
            std::thread::spawn(move || drop(old));
        }
        self.drop_candidates();
        self.canvas.view.fit_pending = true;
        self.info(format!("opened project {}", o.path.display()));
        self.settings.remember(&o.path);
        self.project_path = Some(o.path);
    }

    pub fn open_dialog(&mut self, kind: Dialog) {
        // The folder last used, else the open photo's (a photo opened from the command line
        // or the recent list: its references and exports are usually beside it).
        let photo_dir = self.doc.as_ref().and_then(|d| d.target.path.parent()).filter(|p| p.is_dir());
        let start = self.settings.last_dir.clone().or_else(|| photo_dir.map(|p| p.to_path_buf()));
        let name = match kind {
            Dialog::Export => self.doc.as_ref().map(|d| d.export_name()),
            Dialog::SaveProject => {
                self.doc.as_ref().map(|d| d.target.path.with_extension(crate::scene::project::EXTENSION))
            }
            _ => None,
        }
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if self.system_dialogs {
            self.spawn(dialog(kind, start, name));
        } else {
            self.file_browser = Some(super::file_browser::FileBrowser::new(kind, start, name));
        }
    }

    /// realfill's own dialog, while open; what it returns goes where the system's would.
    pub(super) fn show_file_browser(&mut self, ctx: &egui::Context) {
        let Some(b) = &mut self.file_browser else { return };
        let kind = b.kind;
        let paths = match b.show(ctx) {
            super::file_browser::Outcome::Open => return,
            super::file_browser::Outcome::Cancelled => None,
            super::file_browser::Outcome::Chosen(p) => Some(p),
        };
        self.file_browser = None;
        self.apply_task(Task::Dialog(kind, paths));
    }

    /// Export the current image to `path` (atomic; never over an input).
    pub fn export(&mut self, path: PathBuf) {
        let Some(doc) = &self.doc else { return };
        let inputs =
            std::iter::once(&doc.target.path).chain(doc.target_file.iter()).chain(doc.refs.iter().map(|r| &r.path));
        if let Some(p) = inputs.into_iter().find(|p| same_file(p, &path)) {
            self.error(format!(
                "{}: that is one of your input photos ({}); choose another name — originals are never overwritten",
                path.display(),
                p.display()
            ));
            return;
        }
        // The command line's formats and rules (special files, size limits of the format).
        if let Err(e) = crate::scene::io::check_output_path(&path)
            .and_then(|_| crate::scene::io::check_output_size(&path, doc.target.width(), doc.target.height()))
        {
            self.error(e.to_string());
            return;
        }
        let (img, meta) = (doc.target.original.clone(), doc.target.metadata.clone());
        let left_out = crate::scene::io::metadata_left_out(&path, &meta);
        if !left_out.is_empty() {
            self.warn(format!(
                "{}: written without the photo's {}, which realfill cannot put in this format (PNG, JPEG and TIFF keep it)",
                path.display(),
                left_out.join(" and ")
            ));
        }
        let quality = self.settings.jpeg_quality;
        self.spawn(move || Task::Saved("exported", save_with(&img, &path, &meta, quality).map(|_| path)));
    }

    /// Replace the mask with an imported one (one undo step); it must have the photo's size.
    pub fn import_mask(&mut self, path: &std::path::Path, m: crate::scene::Mask) {
        let Some(doc) = &mut self.doc else { return };
        let (w, h) = (doc.target.width(), doc.target.height());
        if (m.width, m.height) != (w, h) {
            self.error(format!("{}: the mask is {}×{} but the photo is {w}×{h}", path.display(), m.width, m.height));
            return;
        }
        doc.edit(|d| d.mask = PaintMask::from_mask(&m));
        self.info(format!("mask imported from {}", path.display()));
    }

    /// Write the mask as a PNG (white = fill), the command line's `--mask` format.
    pub fn export_mask(&mut self, path: PathBuf) {
        let Some(doc) = &self.doc else { return };
        let (w, h) = (doc.mask.width as u32, doc.mask.height as u32);
        let data: Vec<u8> = doc.mask.data().iter().map(|&v| if v != 0 { 255 } else { 0 }).collect();
        self.spawn(move || {
            let img = image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, data).expect("mask size"));
            Task::Saved("mask exported to", save_atomic(&img, &path).map(|_| path))
        });
    }

    pub fn save_project(&mut self, path: PathBuf) {
        let Some(doc) = &self.doc else { return };
        let project = Project {
            target: doc.target_file.clone().unwrap_or_else(|| doc.target.path.clone()),
            references: doc.refs.iter().map(|r| r.path.clone()).collect(),
            extension: doc.extension,
            mask: (!doc.mask.is_empty()).then(|| doc.mask.rle()),
            settings: self.settings.run.clone(),
        };
        // A fill result lives only in memory: write it beside the project first.
        let pixels = doc.target_file.is_none().then(|| (doc.target.original.clone(), doc.target.metadata.clone()));
        let revision = doc.revision;
        self.spawn(move || {
            Task::ProjectSaved(
                (|| {
                    let mut project = project;
                    let mut written = None;
                    if let Some((img, meta)) = pixels {
                        let stem = path
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "project".into());
                        let t = path.with_file_name(format!("{stem}-target.png"));
                        save_with(&img, &t, &meta, crate::scene::io::JPEG_QUALITY)?;
                        project.target = t.clone();
                        written = Some(t);
                    }
                    project.save(&path)?;
                    Ok((path, written))
                })(),
                revision,
            )
        });
    }

    /// A Stable Diffusion folder was chosen: kept and selected as the engine when it has the
    /// diffusers layout (the networks themselves are read, and checked, at the first fill).
    pub fn sd_model_chosen(&mut self, dir: PathBuf) {
        let missing: Vec<&str> = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
            .into_iter()
            .filter(|sub| !dir.join(sub).is_dir())
            .collect();
        if !missing.is_empty() {
            return self.error(format!(
                "{}: not a Stable Diffusion folder in diffusers layout (no {}); {}",
                dir.display(),
                missing.join(", "),
                crate::diffusion::sd::HELP
            ));
        }
        self.settings.run.sd.model = Some(dir);
        self.settings.run.engine = crate::settings::EngineKind::StableDiffusion;
        self.info("Fill now uses Stable Diffusion (Engine: Stable Diffusion)".to_string());
    }

    pub(super) fn apply_task(&mut self, t: Task) {
        match t {
            // A save dialog cancelled: what waited for the save waits no more.
            Task::Dialog(Dialog::SaveProject, None) => self.after_save = None,
            Task::Dialog(_, None) => {}
            Task::DialogUnavailable(kind, start, name, why) => {
                self.system_dialogs = false;
                // rfd's reasons are D-Bus details: for the terminal, not the window.
                eprintln!("realfill: no system file dialog: {why}");
                self.info("no system file dialog answered (XDG desktop portal or zenity): realfill's own is used");
                self.file_browser = Some(super::file_browser::FileBrowser::new(kind, start, name));
            }
            Task::Dialog(kind, Some(paths)) => {
                if let Some(dir) = paths.first().and_then(|p| p.parent()) {
                    self.settings.last_dir = Some(dir.to_path_buf());
                }
                let first = paths[0].clone();
                match kind {
                    Dialog::OpenPhoto => self.spawn(load_target(first)),
                    Dialog::AddReferences => {
                        let canvas = self.doc.as_ref().map(|d| d.canvas_size());
                        self.spawn(load_refs(paths, canvas))
                    }
                    Dialog::OpenProject => self.spawn(open_project(first)),
                    Dialog::SaveProject => self.save_project(with_extension(first, crate::scene::project::EXTENSION)),
                    Dialog::Export => self.export(with_extension(first, "png")),
                    Dialog::ImportMask => {
                        self.spawn(move || Task::Mask(first.clone(), crate::scene::io::load_mask(&first)))
                    }
                    Dialog::ExportMask => self.export_mask(with_extension(first, "png")),
                    Dialog::SdModel => self.sd_model_chosen(first),
                }
            }
            Task::Target(Ok(p)) => self.photo_opened(p),
            Task::Target(Err(e)) => self.error(e.to_string()),
            Task::Pasted(kind, photo) => self.pasted(kind, photo),
            Task::Mask(path, Ok(m)) => self.import_mask(&path, m),
            Task::Mask(_, Err(e)) => self.error(e.to_string()),
            Task::References(results) => {
                let mut photos = Vec::new();
                for r in results {
                    match r {
                        Ok(p) => photos.push(p),
                        Err(e) => self.error(e.to_string()),
                    }
                }
                if let Some(doc) = &mut self.doc {
                    for note in doc.add_refs(photos) {
                        self.warn(note);
                    }
                }
            }
            Task::Project(Ok(o)) => self.project_opened(o),
            Task::Project(Err(e)) => self.error(e.to_string()),
            Task::Note(Ok(text)) => self.info(text),
            Task::Note(Err(e)) => self.error(e.to_string()),
            Task::Saved(what, Ok(p)) => self.info(format!("{what} {}", p.display())),
            Task::Saved(_, Err(e)) => self.error(e.to_string()),
            Task::ProjectSaved(Ok((path, written)), revision) => {
                if let (Some(doc), Some(t)) = (&mut self.doc, &written) {
                    doc.target_file = Some(t.clone());
                }
                let extra = written.map(|t| format!(" (the filled photo as {})", t.display())).unwrap_or_default();
                self.info(format!("saved project {}{extra}", path.display()));
                self.settings.remember(&path);
                self.project_path = Some(path);
                self.saved_at(revision);
            }
            Task::ProjectSaved(Err(e), _) => {
                // What waited for the save (closing, opening another) waits no more.
                self.after_save = None;
                self.error(e.to_string())
            }
            Task::Scene(kind, scene) => self.scene_ready(kind, scene),
        }
    }
}

/// Add `ext` when the name has no extension (dialogs return what the user typed).
fn with_extension(p: PathBuf, ext: &str) -> PathBuf {
    if p.extension().is_none() { p.with_extension(ext) } else { p }
}
