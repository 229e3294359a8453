//! Work the UI thread hands off so that it never blocks: file dialogs (the XDG portal may take
//! seconds), decoding photos, encoding exports, reading and writing projects, building a job's
//! scene. Each task runs on its own short-lived thread and returns a `Task` that a later frame
//! applies (`Tasks` counts those still out).

use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender, unbounded};

use super::clipboard::PasteAs;
use super::dialogs::Dialog;
use super::document::Document;
use super::jobs::{JobKind, SceneResult};
use super::messages::Messages;
use crate::error::{Error, Result};
use crate::scene::Photo;
use crate::scene::io::{load_photo, load_reference, same_file, save_atomic, save_with};
use crate::scene::project::Project;
use crate::settings::RunSettings;

pub struct OpenedProject {
    pub path: PathBuf,
    pub project: Project,
    pub target: Photo,
    pub refs: Vec<Photo>,
}

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
    Pasted(PasteAs, Result<Photo>),
    /// A mask image was read for the document.
    Mask(PathBuf, Result<crate::scene::Mask>),
    /// A project was saved (of the document at this revision); the target had to be written
    /// beside it first (its new path).
    ProjectSaved(Result<(PathBuf, Option<PathBuf>)>, u64),
    /// The scene for a Learn or Fill the person asked for (built off the UI thread: on a
    /// camera photo the full-resolution mask takes hundreds of milliseconds).
    Scene(JobKind, SceneResult),
}

/// The background tasks' channel, and how many are out.
pub struct Tasks {
    tx: Sender<Task>,
    rx: Receiver<Task>,
    pending: usize,
    /// For waking the UI when a task is done (set at the first frame).
    waker: Option<egui::Context>,
}

impl Default for Tasks {
    fn default() -> Self {
        let (tx, rx) = unbounded();
        Tasks { tx, rx, pending: 0, waker: None }
    }
}

impl Tasks {
    /// Run `work` on its own thread; its result arrives as a `Task` in a later frame.
    pub fn spawn(&mut self, work: impl FnOnce() -> Task + Send + 'static) {
        let tx = self.tx.clone();
        let ctx = self.waker.clone();
        self.pending += 1;
        std::thread::spawn(move || {
            let _ = tx.send(work());
            if let Some(c) = ctx {
                c.request_repaint();
            }
        });
    }

    /// The UI's context, once a frame has been drawn.
    pub fn waker(&self) -> Option<&egui::Context> {
        self.waker.as_ref()
    }

    pub fn set_waker(&mut self, ctx: &egui::Context) {
        if self.waker.is_none() {
            self.waker = Some(ctx.clone());
        }
    }

    /// Whether a task is still out (the UI keeps polling).
    pub fn any_pending(&self) -> bool {
        self.pending > 0
    }

    /// A finished task, without waiting.
    pub fn try_next(&mut self) -> Option<Task> {
        let t = self.rx.try_recv().ok()?;
        self.pending = self.pending.saturating_sub(1);
        Some(t)
    }

    /// The next task to finish, waiting for it (tests); None when none is out, or none came
    /// within a minute.
    pub fn wait_next(&mut self) -> Option<Task> {
        if self.pending == 0 {
            return None;
        }
        let t = self.rx.recv_timeout(std::time::Duration::from_secs(60)).ok()?;
        self.pending -= 1;
        Some(t)
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

/// Open a recent file: a project or a photo, by its extension.
pub fn open_file(path: PathBuf) -> impl FnOnce() -> Task + Send + 'static {
    move || {
        if path.extension().is_some_and(|e| e == crate::scene::project::EXTENSION) {
            open_project(path)()
        } else {
            load_target(path)()
        }
    }
}

/// Export the document's image to `path` (atomic; never over an input): the task, or None
/// when refused (said in `messages`).
pub fn export(
    doc: &Document,
    path: PathBuf,
    quality: u8,
    messages: &mut Messages,
) -> Option<impl FnOnce() -> Task + Send + 'static> {
    let inputs =
        std::iter::once(&doc.target.path).chain(doc.target_file.iter()).chain(doc.refs.iter().map(|r| &r.path));
    if let Some(p) = inputs.into_iter().find(|p| same_file(p, &path)) {
        messages.error(format!(
            "{}: that is one of your input photos ({}); choose another name — originals are never overwritten",
            path.display(),
            p.display()
        ));
        return None;
    }
    // The command line's formats and rules (special files, size limits of the format).
    if let Err(e) = crate::scene::io::check_output_path(&path)
        .and_then(|_| crate::scene::io::check_output_size(&path, doc.target.width(), doc.target.height()))
    {
        messages.error(e.to_string());
        return None;
    }
    let (img, meta) = (doc.target.original.clone(), doc.target.metadata.clone());
    let left_out = crate::scene::io::metadata_left_out(&path, &meta);
    if !left_out.is_empty() {
        messages.warn(format!(
            "{}: written without the photo's {}, which realfill cannot put in this format (PNG, JPEG and TIFF keep it)",
            path.display(),
            left_out.join(" and ")
        ));
    }
    Some(move || Task::Saved("exported", save_with(&img, &path, &meta, quality).map(|_| path)))
}

/// Write the mask as a PNG (white = fill), the command line's `--mask` format.
pub fn export_mask(doc: &Document, path: PathBuf) -> impl FnOnce() -> Task + Send + 'static {
    let (w, h) = (doc.mask.width as u32, doc.mask.height as u32);
    let data: Vec<u8> = doc.mask.data().iter().map(|&v| if v != 0 { 255 } else { 0 }).collect();
    move || {
        let img = image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, data).expect("mask size"));
        Task::Saved("mask exported to", save_atomic(&img, &path).map(|_| path))
    }
}

/// Save `doc` with the run settings `run` as a project at `path`.
pub fn save_project(doc: &Document, run: &RunSettings, path: PathBuf) -> impl FnOnce() -> Task + Send + 'static {
    let project = Project {
        target: doc.target_file.clone().unwrap_or_else(|| doc.target.path.clone()),
        references: doc.refs.iter().map(|r| r.path.clone()).collect(),
        extension: doc.extension,
        mask: (!doc.mask.is_empty()).then(|| doc.mask.rle()),
        settings: run.clone(),
    };
    // A fill result lives only in memory: write it beside the project first.
    let pixels = doc.target_file.is_none().then(|| (doc.target.original.clone(), doc.target.metadata.clone()));
    let revision = doc.revision;
    move || {
        Task::ProjectSaved(
            (|| {
                let mut project = project;
                let mut written = None;
                if let Some((img, meta)) = pixels {
                    let stem =
                        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "project".into());
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
    }
}
