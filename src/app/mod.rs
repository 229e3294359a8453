//! The desktop app (eframe/egui): references on the left, the canvas in the middle, the run
//! panel on the right, candidates and messages at the bottom.
//!
//! The UI thread never blocks: fills run on the engine's worker thread (Jobs in, Events
//! out; the worker wakes the UI after each event); file dialogs, decoding and encoding run on
//! short-lived threads whose results arrive through `tasks`. Each frame starts by draining
//! both channels, keeps only the newest preview, then draws.
//!
//! `RealfillApp` is made of parts, each in its own module with the methods that touch only it:
//! the document (`document`) and how it is shown (`view`), the job and its previews (`jobs`),
//! the fill's candidates (`candidates`), the project file and the "save changes?" prompt
//! (`unsaved`), file dialogs (`file_dialogs`), background tasks (`tasks`), messages
//! (`messages`), frame times (`frame_stats`), the settings and their autosave (`settings`).
//! Panels (`panels`) draw parts and push `Command`s. This module applies the commands and does
//! whatever needs several parts at once; no submodule sees `RealfillApp`.

mod candidates;
pub mod canvas;
pub mod clipboard;
pub mod commands;
pub mod dialogs;
pub mod document;
pub mod file_browser;
mod file_dialogs;
mod frame_stats;
mod jobs;
mod mask_overlay;
mod messages;
mod panels;
mod portal_log;
mod refs_offer;
pub mod settings;
mod tasks;
pub mod unsaved;
mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::FillSettings;
use crate::scene::Photo;
use crate::settings::EngineKind;
use candidates::Candidates;
use canvas::Canvas;
use commands::Command;
use dialogs::Dialog;
use document::{Document, PaintMask};
use file_dialogs::FileDialogs;
use frame_stats::FrameStats;
use jobs::{Filled, JobView, Outcome};
use messages::Messages;
use refs_offer::RefsOffer;
use settings::{AppSettings, Autosave};
use tasks::{OpenedProject, Tasks};
use unsaved::{Pending, Reply, Saving};
use view::DocView;

pub use candidates::Candidate;
pub use jobs::{JobKind, LearnProgress, Preview, Running};
pub use messages::{Level, Message};
pub use tasks::Task;
pub use view::ThumbCache;

/// The app: its parts, and what panels and shortcuts asked for this frame. Tests and `main`
/// use the methods below.
pub struct RealfillApp {
    /// The document being edited (none until a photo opens).
    doc: Option<Document>,
    view: DocView,
    job: JobView,
    /// The last fill's candidates.
    results: Candidates,
    saving: Saving,
    settings: AppSettings,
    autosave: Autosave,
    dialogs: FileDialogs,
    tasks: Tasks,
    messages: Messages,
    frame: FrameStats,
    /// The previous photo's references, while the person is asked whether this photo keeps
    /// them.
    refs_offer: Option<RefsOffer>,
    /// The keyboard shortcut list is open (F1, Help menu).
    show_shortcuts: bool,
    clipboard: clipboard::Clipboard,
    last_title: String,
    /// What panels and shortcuts asked for this frame; applied at its end.
    commands: Vec<Command>,
}

impl RealfillApp {
    pub fn new(doc: Option<Document>, settings: AppSettings) -> RealfillApp {
        RealfillApp {
            doc,
            view: DocView::default(),
            job: JobView::default(),
            results: Candidates::default(),
            saving: Saving::default(),
            autosave: Autosave::new(&settings),
            settings,
            dialogs: FileDialogs::default(),
            tasks: Tasks::default(),
            messages: Messages::default(),
            frame: FrameStats::default(),
            refs_offer: None,
            show_shortcuts: false,
            clipboard: Default::default(),
            last_title: String::new(),
            commands: Vec::new(),
        }
    }

    /// The app on the bundled demo scene (target, painted mask, references).
    pub fn demo(settings: AppSettings) -> RealfillApp {
        let mut app = RealfillApp::new(None, settings);
        match load_demo() {
            Ok(doc) => {
                app.doc = Some(doc);
                app.info("demo scene loaded: the red region will be filled from the two references; press Fill");
            }
            Err(e) => app.error(format!("could not load the demo scene: {e}")),
        }
        app
    }

    /// The app on one photo (errors appear in the window).
    pub fn with_photo(path: &Path, settings: AppSettings) -> RealfillApp {
        let mut app = RealfillApp::new(None, settings);
        match crate::scene::io::load_photo(path) {
            Ok(p) => app.open_target(p),
            Err(e) => app.error(e.to_string()),
        }
        app
    }

    /// The app on a saved project (errors appear in the window).
    pub fn with_project(path: &Path, settings: AppSettings) -> RealfillApp {
        let mut app = RealfillApp::new(None, settings);
        let task = tasks::open_project(path.to_path_buf())();
        app.apply_task(task);
        app
    }

    /// Every job starts from `f` applied to the default template (tests use tiny networks).
    pub fn with_job_template(mut self, f: impl FnOnce(&mut FillSettings)) -> RealfillApp {
        f(&mut self.job.template);
        self
    }

    /// Use realfill's own file dialog, never the system's (tests: no dialog outside the app).
    pub fn with_builtin_file_dialogs(mut self) -> RealfillApp {
        self.dialogs.system = false;
        self
    }

    /// realfill's own file dialog, while it is open.
    pub fn file_browser(&self) -> Option<&file_browser::FileBrowser> {
        self.dialogs.browser.as_ref()
    }

    /// Hide the frame time and a fill's seconds in the status bar (snapshots must not vary).
    pub fn without_frame_time(mut self) -> RealfillApp {
        self.frame.show = false;
        self
    }

    /// Draw the mask on the GPU through egui_wgpu's renderer `rs` (eframe's, or a test's).
    pub fn use_gpu(&mut self, rs: &eframe::egui_wgpu::RenderState) {
        self.view.canvas.use_gpu(rs);
    }

    pub fn doc(&self) -> Option<&Document> {
        self.doc.as_ref()
    }
    pub fn doc_mut(&mut self) -> Option<&mut Document> {
        self.doc.as_mut()
    }
    pub fn settings(&self) -> &AppSettings {
        &self.settings
    }
    /// Whether the shown fill is tinted by source.
    pub fn source_tint(&self) -> bool {
        self.view.source_tint
    }

    pub fn settings_mut(&mut self) -> &mut AppSettings {
        &mut self.settings
    }
    pub fn canvas(&self) -> &Canvas {
        &self.view.canvas
    }
    pub fn candidates(&self) -> &[Candidate] {
        &self.results.list
    }
    /// The candidate shown on the canvas.
    pub fn selected(&self) -> usize {
        self.results.selected
    }
    pub fn preview(&self) -> Option<&Preview> {
        self.job.preview.as_ref()
    }
    /// Previews the running (or last) job sent, shown or not.
    pub fn previews_received(&self) -> usize {
        self.job.previews_received
    }
    /// The running fill's finished native-resolution strips.
    pub fn native_preview(&self) -> &[canvas::NativeTexture] {
        &self.job.native_preview
    }
    pub fn learning(&self) -> &LearnProgress {
        &self.job.learning
    }
    pub fn status(&self) -> &str {
        &self.job.status
    }
    /// Where jobs compute, as the engine described it (None until it started, or when its GPU
    /// server was lost).
    pub fn backend_description(&self) -> Option<&str> {
        self.job.backend.as_deref()
    }

    pub fn messages(&self) -> &[Message] {
        self.messages.all()
    }

    /// Ask for `c`; it is carried out at the end of the frame.
    pub fn push(&mut self, c: Command) {
        self.commands.push(c);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.messages.info(text);
    }
    pub fn warn(&mut self, text: impl Into<String>) {
        self.messages.warn(text);
    }
    pub fn error(&mut self, text: impl Into<String>) {
        self.messages.error(text);
    }

    pub fn open_target(&mut self, p: Photo) {
        self.forget_previous_notes();
        self.job.handover = None;
        if p.transparent.is_some() {
            self.info(format!("{}: transparent pixels are part of the fill region (shown in red)", p.path.display()));
        }
        let doc = Document::new(p);
        if let Some(mut old) = self.doc.take() {
            // Another photo is another scene unless the person says otherwise (`refs_offer`).
            let refs = std::mem::take(&mut old.refs);
            if !refs.is_empty() {
                let from = old.target.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.refs_offer = Some(RefsOffer::new(refs, from));
            }
            // The old photo and its undo history: freed off the UI thread.
            std::thread::spawn(move || drop(old));
        }
        self.saving.opened(doc.revision, None);
        // A photo that exists on disk (not a fill result or the demo's scaled copy).
        if doc.target.path.is_file() {
            self.settings.remember(&doc.target.path);
        }
        self.doc = Some(doc);
        self.results.clear();
        self.view.fit();
    }

    /// Replace the document with an opened project (after asking about unsaved changes, if
    /// there were any).
    fn open_project_now(&mut self, o: OpenedProject) {
        self.forget_previous_notes();
        // A project brings its own references.
        self.refs_offer = None;
        self.job.handover = None;
        let mut doc = Document::new(o.target);
        if let Some(m) = &o.project.mask
            && let Ok(pm) = PaintMask::from_rle(m)
        {
            doc.mask = pm;
        }
        doc.extension = o.project.extension;
        doc.refs = o.refs.into_iter().map(Arc::new).collect();
        self.settings.run = o.project.settings.clone();
        let revision = doc.revision;
        if let Some(old) = self.doc.replace(doc) {
            std::thread::spawn(move || drop(old));
        }
        self.results.clear();
        self.view.fit();
        self.info(format!("opened project {}", o.path.display()));
        self.settings.remember(&o.path);
        self.saving.opened(revision, Some(o.path));
    }

    /// Another document opens: what was said about the previous one (the demo's hint, the
    /// last fill's status) no longer applies. Errors stay until dismissed.
    fn forget_previous_notes(&mut self) {
        self.messages.forget_notes();
        self.job.status.clear();
    }

    /// Whether the photo just opened is asked to keep the previous photo's references.
    pub fn asks_to_keep_references(&self) -> bool {
        self.refs_offer.is_some()
    }

    /// The question whether the photo just opened keeps the previous photo's references.
    fn refs_prompt(&mut self, ctx: &egui::Context) {
        let Some(keep) = self.refs_offer.as_ref().and_then(|o| o.ask(ctx)) else { return };
        let Some(offer) = self.refs_offer.take() else { return };
        match (keep, &mut self.doc) {
            (true, Some(doc)) => {
                // Through the same checks as added photos: the new photo may be one of them.
                let notes = doc.add_shared_refs(offer.refs);
                self.info("kept the references of the previous photo");
                for n in notes {
                    self.warn(n);
                }
            }
            _ => {
                std::thread::spawn(move || drop(offer));
            }
        }
    }

    /// Compute on the GPU server (or on this computer) from the next job on; the engine
    /// restarts at once.
    fn use_gpu_server(&mut self, ctx: &egui::Context, on: bool) {
        self.settings.use_gpu_server = on;
        self.job.restart_engine(ctx, &self.settings);
    }

    /// Whether jobs compute on a GPU server, and its trouble if it has any.
    pub fn gpu_server_state(&self) -> (bool, Option<&str>) {
        (self.settings.use_gpu_server, self.job.server_lost.as_deref())
    }

    pub fn busy(&self) -> bool {
        self.job.busy()
    }

    /// Start building the scene for a Learn or Fill off the UI thread; the job is submitted
    /// when it arrives (`scene_ready`). The document is copied as it is now (photos shared).
    fn start_job(&mut self, kind: JobKind) {
        if self.busy() {
            return;
        }
        let Some(doc) = &self.doc else { return };
        let (target, refs, mask, extension) = (doc.target.clone(), doc.refs.clone(), doc.mask.clone(), doc.extension);
        self.job.preparing(kind);
        self.tasks.spawn(move || {
            let scene = document::scene_of(target, refs, &mask, extension).map(|s| {
                let fill_box = s.mask.bbox();
                (s, fill_box)
            });
            Task::Scene(kind, scene)
        });
    }

    /// The scene for the job asked for has been built: the job goes to the engine (a fill's
    /// candidates replace the last fill's).
    fn scene_ready(&mut self, kind: JobKind, scene: jobs::SceneResult) {
        let ctx = self.tasks.waker().cloned();
        if self.job.scene_ready(kind, scene, &self.settings, ctx, &mut self.messages) {
            self.results.restart();
        }
    }

    /// Whether the document has anything to fill (cheap: the mask keeps its painted count).
    pub fn has_fill_region(&self) -> bool {
        self.doc.as_ref().is_some_and(|d| d.has_fill_region())
    }

    /// Apply the engine's events, in order; only the newest preview is uploaded.
    fn drain_events(&mut self, ctx: &egui::Context) {
        let Some(events) = self.job.take_events() else { return };
        for ev in events {
            match self.job.apply(ctx, ev, &mut self.messages, self.frame.show) {
                Some(Outcome::Learned { cached }) => self.learned(cached),
                Some(Outcome::Filled(f)) => self.filled(f),
                None => {}
            }
        }
        self.job.upload(ctx);
    }

    /// Learning ended: Fill uses what was learned.
    fn learned(&mut self, cached: bool) {
        if self.settings.run.engine == EngineKind::StableDiffusion {
            // Learned into Stable Diffusion's LoRA: Fill with Stable Diffusion uses it.
            self.job.status = if cached {
                "the scene's LoRA was already learned".into()
            } else {
                "learned the scene into Stable Diffusion (LoRA)".into()
            };
        } else if self.settings.run.engine != EngineKind::SceneModel {
            // The user asked for the scene model: Fill uses it from now on.
            self.settings.run.engine = EngineKind::SceneModel;
            self.info("Fill now uses the learned scene model (Engine: scene model)");
        }
    }

    /// A candidate is done: the first goes on the canvas (saying so when much of it is
    /// invented); after the last, the best is shown.
    fn filled(&mut self, f: Filled) {
        let first = self.results.list.is_empty();
        if first
            && let Some(m) =
                candidates::invented_note(&f.candidate.sources, f.engine, self.settings.run.sd.model.is_some())
        {
            self.messages.push(m);
        }
        self.results.push(f.candidate);
        if first && let Some(doc) = &mut self.doc {
            self.results.accept_first(doc);
        }
        if f.last && self.results.list.len() > 1 {
            self.results.rank(self.doc.as_mut());
        }
    }

    /// After a fill, the last preview goes in the frame the result's texture is drawn in.
    fn drop_handover_once_shown(&mut self) {
        if self.job.handover.is_some() && self.doc.as_ref().is_none_or(|d| self.view.canvas.shows_target_of(d)) {
            self.job.handover = None;
        }
    }

    /// Whether a preview is on the canvas: the running fill's, or the last one of a finished
    /// fill while its result's texture is being made.
    pub fn preview_on_canvas(&self) -> bool {
        self.job.preview_on_canvas()
    }

    /// Ctrl+V with an image on the clipboard (egui hands it over as an event) and Ctrl+C.
    fn clipboard_events(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        // Only the two events this looks at (not a copy of the frame's every event).
        let events: Vec<egui::Event> = ctx.input(|i| {
            i.events.iter().filter(|e| matches!(e, egui::Event::PasteImage(_) | egui::Event::Copy)).cloned().collect()
        });
        for e in events {
            match e {
                egui::Event::PasteImage(img) => {
                    let rgba: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_srgba_unmultiplied()).collect();
                    let photo = clipboard::photo_of(img.size[0], img.size[1], rgba);
                    self.pasted(clipboard::PasteAs::Auto, photo);
                }
                egui::Event::Copy => self.push(Command::CopyImage),
                _ => {}
            }
        }
    }

    /// A pasted image becomes the photo or a reference.
    pub fn pasted(&mut self, kind: clipboard::PasteAs, photo: crate::error::Result<Photo>) {
        let photo = match photo {
            Ok(p) => p,
            Err(e) => return self.error(e.to_string()),
        };
        let as_reference = match kind {
            clipboard::PasteAs::Auto => self.doc.is_some(),
            clipboard::PasteAs::Photo => false,
            clipboard::PasteAs::Reference => true,
        };
        match (&mut self.doc, as_reference) {
            (Some(doc), true) => {
                let (w, h) = (photo.width(), photo.height());
                for note in doc.add_refs(vec![photo]) {
                    self.messages.warn(note);
                }
                self.info(format!("pasted a {w}×{h} image as a reference"));
            }
            (None, true) => self.error("open a photo first: a reference belongs to a photo"),
            (_, false) => self.photo_opened(photo),
        }
    }

    /// The offer taken: the fill on the canvas is undone (its photo and mask come back) and the
    /// same region filled with Stable Diffusion. After an edit there is no such region to go
    /// back to: the engine is chosen and the person fills when ready.
    fn fill_again_with_stable_diffusion(&mut self) {
        if self.busy() {
            return;
        }
        self.settings.run.engine = EngineKind::StableDiffusion;
        let untouched = self.doc.as_ref().is_some_and(|d| self.results.shown_on(d));
        if untouched {
            self.undo();
            self.start_job(JobKind::Fill);
        } else {
            self.info(
                "Engine: Stable Diffusion. The photo changed since that fill: brush what to fill and press Fill.",
            );
        }
    }

    fn undo(&mut self) {
        if !self.busy()
            && let Some(d) = &mut self.doc
        {
            d.undo();
        }
    }

    fn redo(&mut self) {
        if !self.busy()
            && let Some(d) = &mut self.doc
        {
            d.redo();
        }
    }

    /// Carry out what panels and shortcuts asked for this frame, in order.
    fn apply_commands(&mut self, ctx: &egui::Context) {
        for c in std::mem::take(&mut self.commands) {
            self.apply(ctx, c);
        }
    }

    fn apply(&mut self, ctx: &egui::Context, c: Command) {
        let editable = !self.busy();
        match c {
            Command::OpenDialog(d) => self.open_dialog(d),
            Command::Undo => self.undo(),
            Command::Redo => self.redo(),
            Command::Learn => self.start_job(JobKind::Learn),
            Command::Fill => self.start_job(JobKind::Fill),
            Command::Cancel => self.job.cancel(),
            Command::PickCandidate(i) if editable => {
                if let Some(doc) = &mut self.doc {
                    self.results.pick(i, doc);
                }
            }
            Command::SetTool(t) => self.view.canvas.tool = Some(t),
            Command::Fit => self.view.fit(),
            Command::ActualPixels => self.view.actual_pixels(ctx),
            Command::InvertMask if editable => {
                if let Some(d) = &mut self.doc {
                    d.edit(|d| d.mask.invert());
                }
            }
            Command::ClearMask if editable => {
                if let Some(d) = &mut self.doc {
                    d.edit(|d| d.mask.clear());
                }
            }
            Command::GrowMask(px) if editable => {
                if let Some(d) = &mut self.doc {
                    d.edit(|d| d.mask.grow(px));
                }
            }
            Command::RemoveReference(i) if editable => {
                if let Some(d) = &mut self.doc
                    && i < d.refs.len()
                {
                    d.refs.remove(i);
                }
            }
            Command::SetExtension(e) if editable => {
                let Some(doc) = &mut self.doc else { return };
                let old = doc.extension;
                doc.edit(|d| d.set_extension(e));
                self.view.extension_changed(old, e);
            }
            Command::ToggleBefore => self.view.before_toggle = !self.view.before_toggle,
            Command::ToggleSplit => self.view.split = !self.view.split,
            Command::ToggleSourceTint => self.view.source_tint = !self.view.source_tint,
            Command::FillWithStableDiffusion => self.fill_again_with_stable_diffusion(),
            Command::Save => match self.saving.project_path.clone() {
                Some(p) if self.doc.is_some() => self.save_project(p),
                _ => self.open_dialog(Dialog::SaveProject),
            },
            Command::Zoom(f) => self.view.zoom(f),
            Command::ToggleShortcuts => self.show_shortcuts = !self.show_shortcuts,
            Command::OpenRecent(p) => self.open_recent(p),
            Command::Paste(kind) => {
                let clip = self.clipboard.clone();
                self.tasks.spawn(move || Task::Pasted(kind, clip.paste()));
            }
            Command::CopyImage => {
                if let Some(d) = &self.doc {
                    let (clip, img) = (self.clipboard.clone(), d.target.original.clone());
                    self.tasks.spawn(move || {
                        Task::Note(clip.copy(&img).map(|_| "the image is on the clipboard".to_string()))
                    });
                }
            }
            Command::UseGpuServer if editable => {
                let typed = &mut self.settings.gpu_server;
                match crate::remote::parse_url(typed.url.trim()) {
                    Ok(url) => {
                        typed.url = url;
                        typed.token = typed.token.trim().to_string();
                        self.use_gpu_server(ctx, true);
                    }
                    Err(e) => self.error(e),
                }
            }
            Command::UseThisComputer if editable => self.use_gpu_server(ctx, false),
            Command::Quit => {
                if self.request_close(ctx) {
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                }
            }
            Command::DismissMessage(i) => self.messages.dismiss(i),
            // Edits asked for while a job runs are dropped (the controls are disabled then).
            Command::PickCandidate(_)
            | Command::InvertMask
            | Command::ClearMask
            | Command::GrowMask(_)
            | Command::RemoveReference(_)
            | Command::SetExtension(_)
            // The engine is not switched under a running job.
            | Command::UseGpuServer
            | Command::UseThisComputer => {}
        }
    }

    /// Files dropped on the window: on the references panel → references; elsewhere → the
    /// first becomes the target and any others references (a project file opens).
    fn dropped_files(&mut self, ui: &egui::Ui, refs_panel: egui::Rect) {
        let (files, pos) = ui.input(|i| {
            (i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect::<Vec<_>>(), i.pointer.hover_pos())
        });
        if files.is_empty() {
            return;
        }
        let on_refs = pos.is_some_and(|p| refs_panel.contains(p)) && self.doc.is_some();
        let canvas = self.doc.as_ref().map(|d| d.canvas_size());
        if let Some(project) = files.iter().find(|f| is_project(f)) {
            self.tasks.spawn(tasks::open_project(project.clone()));
        } else if on_refs {
            self.tasks.spawn(tasks::load_refs(files, canvas));
        } else {
            let mut it = files.into_iter();
            if let Some(t) = it.next() {
                self.tasks.spawn(tasks::load_target(t));
            }
            let rest: Vec<PathBuf> = it.collect();
            if !rest.is_empty() {
                self.tasks.spawn(tasks::load_refs(rest, canvas));
            }
        }
    }

    /// Run a background task; its result arrives as a `Task` in a later frame.
    pub fn spawn(&mut self, work: impl FnOnce() -> Task + Send + 'static) {
        self.tasks.spawn(work);
    }

    /// Wait (in tests) until background tasks have reported.
    pub fn wait_for_tasks(&mut self) {
        while let Some(t) = self.tasks.wait_next() {
            self.apply_task(t);
        }
    }

    fn drain_tasks(&mut self) {
        while let Some(t) = self.tasks.try_next() {
            self.apply_task(t);
        }
    }

    /// Write changed settings now and then (`Autosave`), and on exit.
    fn save_settings_if_changed(&mut self) {
        if let Err(e) = self.autosave.save_if_changed(&self.settings) {
            self.warn(format!("settings not saved: {e}"));
        }
    }

    /// Open a recent file: a project or a photo, by its extension.
    pub fn open_recent(&mut self, path: PathBuf) {
        self.tasks.spawn(tasks::open_file(path));
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
        self.dialogs.open(kind, start, name, &mut self.tasks);
    }

    /// realfill's own dialog, while open; what it returns goes where the system's would.
    fn show_file_browser(&mut self, ctx: &egui::Context) {
        if let Some(t) = self.dialogs.show(ctx) {
            self.apply_task(t);
        }
    }

    /// Export the current image to `path` (atomic; never over an input).
    pub fn export(&mut self, path: PathBuf) {
        let Some(doc) = &self.doc else { return };
        if let Some(task) = tasks::export(doc, path, self.settings.jpeg_quality, &mut self.messages) {
            self.tasks.spawn(task);
        }
    }

    /// Replace the mask with an imported one (one undo step); it must have the photo's size.
    pub fn import_mask(&mut self, path: &Path, m: crate::scene::Mask) {
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
        self.tasks.spawn(tasks::export_mask(doc, path));
    }

    pub fn save_project(&mut self, path: PathBuf) {
        let Some(doc) = &self.doc else { return };
        self.tasks.spawn(tasks::save_project(doc, &self.settings.run, path));
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
        self.settings.run.engine = EngineKind::StableDiffusion;
        self.info("Fill now uses Stable Diffusion (Engine: Stable Diffusion)".to_string());
    }

    /// A background task is done: what it brought goes where it belongs.
    fn apply_task(&mut self, t: Task) {
        match t {
            // A save dialog cancelled: what waited for the save waits no more.
            Task::Dialog(Dialog::SaveProject, None) => self.saving.after_save = None,
            Task::Dialog(_, None) => {}
            Task::DialogUnavailable(kind, start, name, why) => {
                // rfd's reasons are D-Bus details: for the terminal, not the window.
                eprintln!("realfill: no system file dialog: {why}");
                self.info("no system file dialog answered (XDG desktop portal or zenity): realfill's own is used");
                self.dialogs.fall_back(kind, start, name);
            }
            Task::Dialog(kind, Some(paths)) => {
                if let Some(dir) = paths.first().and_then(|p| p.parent()) {
                    self.settings.last_dir = Some(dir.to_path_buf());
                }
                let first = paths[0].clone();
                match kind {
                    Dialog::OpenPhoto => self.tasks.spawn(tasks::load_target(first)),
                    Dialog::AddReferences => {
                        let canvas = self.doc.as_ref().map(|d| d.canvas_size());
                        self.tasks.spawn(tasks::load_refs(paths, canvas))
                    }
                    Dialog::OpenProject => self.tasks.spawn(tasks::open_project(first)),
                    Dialog::SaveProject => self.save_project(with_extension(first, crate::scene::project::EXTENSION)),
                    Dialog::Export => self.export(with_extension(first, "png")),
                    Dialog::ImportMask => {
                        self.tasks.spawn(move || Task::Mask(first.clone(), crate::scene::io::load_mask(&first)))
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
                        self.messages.warn(note);
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
                self.saving.project_path = Some(path);
                self.saved_at(revision);
            }
            Task::ProjectSaved(Err(e), _) => {
                // What waited for the save (closing, opening another) waits no more.
                self.saving.after_save = None;
                self.error(e.to_string())
            }
            Task::Scene(kind, scene) => self.scene_ready(kind, scene),
        }
    }

    /// Whether the document has changes no project holds.
    pub fn is_modified(&self) -> bool {
        self.saving.is_modified(self.doc.as_ref())
    }

    /// The window title: "NAME • — realfill" when modified, learning progress first.
    pub fn title(&self) -> String {
        self.saving.title(self.doc.as_ref(), &self.job.title_progress())
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
        if self.saving.must_ask(self.doc.as_ref()) {
            self.saving.pending = Some(p);
        } else {
            self.carry_out(p);
        }
    }

    /// The window's close button, the system's close request or Quit: true when it may close
    /// now, else the prompt asks first.
    pub fn request_close(&mut self, ctx: &egui::Context) -> bool {
        self.saving.request_close(ctx, self.doc.as_ref())
    }

    fn carry_out(&mut self, p: Pending) {
        match p {
            Pending::Close => {
                self.saving.close_confirmed = true;
                if let Some(ctx) = self.tasks.waker() {
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                }
            }
            Pending::Photo(photo) => self.open_target(*photo),
            Pending::Project(o) => self.open_project_now(*o),
        }
    }

    /// The person chose to close without saving (or saved first): the window may close.
    pub fn close_confirmed(&self) -> bool {
        self.saving.close_confirmed
    }

    /// What waits for an answer, if anything (for tests and the prompt).
    pub fn pending(&self) -> Option<&Pending> {
        self.saving.pending.as_ref()
    }

    /// A project was saved at `revision`: carry out what waited for it.
    fn saved_at(&mut self, revision: u64) {
        if let Some(p) = self.saving.saved_at(revision) {
            self.carry_out(p);
        }
    }

    /// The "save changes?" prompt, while something waits for an answer.
    fn prompt(&mut self, ui: &mut egui::Ui) {
        match self.saving.prompt(ui, self.doc.as_ref()) {
            Some(Reply::Save) => match self.saving.project_path.clone() {
                Some(path) => self.save_project(path),
                None => self.open_dialog(Dialog::SaveProject),
            },
            Some(Reply::Discard(p)) => self.carry_out(p),
            None => {}
        }
    }

    /// The canvas with the document, the job's preview over it and the source tint.
    fn central_panel(&mut self, ui: &mut egui::Ui) {
        egui::CentralPanel::default().frame(egui::Frame::NONE).show(ui, |ui| {
            let (preview, native) = self.job.on_canvas();
            let editable = !self.job.busy();
            match &mut self.doc {
                Some(doc) => {
                    let overlay = canvas::Overlay {
                        editable,
                        preview,
                        native,
                        show_before: self.view.show_before,
                        split: self.view.split,
                        tint: self.results.tint(doc, self.view.source_tint),
                    };
                    self.view.canvas.show(ui, doc, overlay, &mut self.settings.brush_radius);
                }
                None => {
                    ui.centered_and_justified(|ui| {
                        ui.label("Open a photo (File, Open photo…), or drop one here.");
                    });
                }
            }
        });
    }

    /// The whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let t0 = Instant::now();
        let ctx = ui.ctx().clone();
        self.tasks.set_waker(&ctx);
        self.drain_tasks();
        self.drain_events(&ctx);
        let pressed = commands::pressed(&ctx);
        // While a prompt or dialog is open its keys are its own (Esc answers it; Ctrl+Enter
        // must not start a fill under a question about the references).
        let modal = self.saving.pending.is_some() || self.refs_offer.is_some() || self.dialogs.browser.is_some();
        if !modal {
            self.commands.extend(pressed);
        }
        self.clipboard_events(&ctx);
        // Holding \\ shows the photo before the last fill (a held key, not a command).
        let held = !ctx.egui_wants_keyboard_input() && ui.input(|i| i.key_down(egui::Key::Backslash));
        self.view.show_before = held || self.view.before_toggle;
        let busy = self.busy();
        let doc = self.doc.as_ref();
        let out = &mut self.commands;
        panels::top_bar(ui, doc, &mut self.settings, &self.view, &self.results, busy, out);
        let zoom = self.view.canvas.view.zoom;
        panels::bottom_bar(ui, &self.results, &self.messages, &self.job, &self.frame, zoom, out);
        let set_aside = self.refs_offer.as_ref().map(|o| o.refs.len());
        let refs_rect = panels::references_panel(ui, doc, set_aside, &mut self.view.ref_thumbs, busy, out);
        let has_fill_region = doc.is_some_and(|d| d.has_fill_region());
        panels::run_panel(ui, &mut self.settings, &self.job, has_fill_region, out);
        self.central_panel(ui);
        self.drop_handover_once_shown();
        self.dropped_files(ui, refs_rect);
        if ctx.input(|i| i.viewport().close_requested()) {
            self.request_close(&ctx);
        }
        self.prompt(ui);
        self.refs_prompt(&ctx);
        self.show_file_browser(&ctx);
        panels::shortcut_list(ui, &mut self.show_shortcuts);
        self.apply_commands(&ctx);
        let title = self.title();
        if title != self.last_title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.last_title = title;
        }
        // Keep polling while a background task (dialog, load) is out.
        if self.tasks.any_pending() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
        self.frame.ui_built(t0);
    }
}

fn is_project(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == crate::scene::project::EXTENSION)
}

/// Add `ext` when the name has no extension (dialogs return what the user typed).
fn with_extension(p: PathBuf, ext: &str) -> PathBuf {
    if p.extension().is_none() { p.with_extension(ext) } else { p }
}

fn load_demo() -> crate::Result<Document> {
    let (target, mask, refs) = crate::scene::demo::load()?;
    let mut doc = Document::new(target);
    if (mask.width, mask.height) == (doc.mask.width, doc.mask.height) {
        doc.mask = PaintMask::from_mask(&mask);
    }
    doc.add_refs(refs);
    Ok(doc)
}

impl eframe::App for RealfillApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        // eframe's measure of the previous frame: UI code plus tessellation and rendering.
        self.frame.measured(frame.info().cpu_usage, self.busy());
        self.show(ui);
        self.save_settings_if_changed();
    }

    fn on_exit(&mut self) {
        self.autosave.save_now(&self.settings);
    }
}

/// Open the window. `photo`: a photo or project to open; None = the demo scene.
pub fn run(photo: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = AppSettings::load();
    let mut app = match &photo {
        Some(p) if is_project(p) => RealfillApp::with_project(p, settings),
        Some(p) => RealfillApp::with_photo(p, settings),
        None => RealfillApp::demo(settings),
    };
    app.autosave.persist = true;
    // What could not be opened is said on the terminal too: the window may never appear.
    for m in app.messages().iter().filter(|m| m.level == Level::Error) {
        eprintln!("error: {}", m.text);
    }
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("realfill")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([720.0, 480.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    let start = Box::new(|cc: &eframe::CreationContext<'_>| {
        if let Some(rs) = &cc.wgpu_render_state {
            app.use_gpu(rs);
        }
        Ok(Box::new(app) as Box<dyn eframe::App>)
    });
    eframe::run_native("realfill", options, start).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window ({e}); run the app on a desktop (DISPLAY or WAYLAND_DISPLAY set), \
                 or fill without one: `realfill fill --demo --out demo-filled.png`, `realfill fill --help`"
        )
    })
}
