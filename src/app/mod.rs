//! The desktop app (eframe/egui): references on the left, the canvas in the middle, the run
//! panel on the right, candidates and messages at the bottom.
//!
//! The UI thread never blocks: fills run on the engine's worker thread (Jobs in, Events
//! out; the worker wakes the UI after each event); file dialogs, decoding and encoding run on
//! short-lived threads whose results arrive through `tasks`. Each frame starts by draining
//! both channels, keeps only the newest preview, then draws.

pub mod canvas;
pub mod clipboard;
pub mod commands;
pub mod dialogs;
pub mod document;
pub mod file_browser;
mod panels;
mod portal_log;
pub mod settings;
mod tasks;
pub mod unsaved;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::engine::{Engine, Event, FillSettings, Job};
use crate::scene::{Photo, Scene};
use crate::settings::EngineKind;
use canvas::Canvas;
use commands::Command;
use document::Document;
use settings::AppSettings;
pub use tasks::Task;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug)]
pub struct Message {
    pub level: Level,
    pub text: String,
    /// A button beside the message, and what it does.
    pub action: Option<(String, Command)>,
}

/// Above this invented share of a fill the app says so and offers Stable Diffusion.
const INVENTED_OFFER: f32 = 0.3;

/// A fill result to pick from.
pub struct Candidate {
    pub seed: u64,
    /// Patch agreement with the references (dB, higher = better), when scored.
    pub agreement: Option<f32>,
    pub photo: Arc<Photo>,
    pub thumb: egui::TextureHandle,
    /// Where its pixels came from (the source tint), and the names of the references it
    /// was filled from.
    pub sources: Arc<crate::engine::sources::Sources>,
    pub ref_names: Vec<String>,
}

/// What the person asked the engine for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Learn,
    Fill,
}

/// The job the engine is working on.
#[allow(clippy::large_enum_variant, reason = "one value per app, replaced once per job")]
pub enum Running {
    /// The job's scene is being built off the UI thread (`Task::Scene`).
    Preparing(JobKind),
    Learn,
    Fill {
        scene: Arc<Scene>,
        /// The fill region's bounding box on the canvas (`Mask::bbox`).
        fill_box: Option<(usize, usize, usize, usize)>,
        settings: FillSettings,
        /// Candidates still to sample after this one.
        remaining: usize,
    },
}

#[derive(Default)]
pub struct LearnProgress {
    pub step: usize,
    pub total: usize,
    pub elapsed_s: f32,
    pub losses: Vec<f32>,
}

pub struct Preview {
    pub step: usize,
    pub total: usize,
    pub tex: egui::TextureHandle,
}

/// The app's state. Fields are private to `app` (its panels read them directly); tests and
/// `main` use the methods below.
pub struct RealfillApp {
    doc: Option<Document>,
    settings: AppSettings,
    /// Write settings to the config folder on exit (off in tests).
    persist: bool,
    /// Template for every job (network size, cache use); its run settings come from
    /// `settings.run` at each job. Tests make it tiny (`with_job_template`).
    job_template: FillSettings,
    engine: Option<Engine>,
    running: Option<Running>,
    learning: LearnProgress,
    preview: Option<Preview>,
    /// Finished strips of the native-resolution fill of the running job (after its previews):
    /// uploaded, and still to upload (a few per frame, so frames stay short).
    native_preview: Vec<canvas::NativeTexture>,
    native_pending: std::collections::VecDeque<crate::engine::detail::NativeTile>,
    candidates: Vec<Candidate>,
    /// The candidate shown on the canvas, and the document revision it was applied at (a
    /// later edit makes picking another candidate a new undo step).
    selected: usize,
    applied_revision: Option<u64>,
    messages: Vec<Message>,
    backend: Option<String>,
    /// Why the GPU server cannot be used (shown in the Run panel with "Use this computer").
    server_lost: Option<String>,
    status: String,
    canvas: Canvas,
    show_before: bool,
    /// Project file of this document, if saved or opened as one.
    project_path: Option<PathBuf>,
    /// The document revision a project last saved (documents start at 0, saved or fresh).
    saved_revision: u64,
    /// What waits for the answer to "save changes?", and what waits for a project save.
    pending: Option<unsaved::Pending>,
    after_save: Option<unsaved::Pending>,
    /// The last preview (and its strips) of a finished fill, drawn until the result's texture
    /// is on screen.
    handover: Option<(Preview, Vec<canvas::NativeTexture>)>,
    /// The person chose to close without saving.
    close_confirmed: bool,
    /// The keyboard shortcut list is open (F1, Help menu).
    show_shortcuts: bool,
    clipboard: clipboard::Clipboard,
    last_title: String,
    tasks_tx: Sender<Task>,
    tasks_rx: Receiver<Task>,
    /// Background tasks (dialogs, loads, saves) not yet finished.
    pending_tasks: usize,
    /// What panels and shortcuts asked for this frame; applied at its end.
    commands: Vec<Command>,
    /// Time the UI spent building the last frames (ms, exponential average).
    frame_ms: f32,
    settings_saved: AppSettings,
    settings_saved_at: Option<Instant>,
    /// The "Before" toggle button (holding \\ also shows the photo before the last fill).
    show_before_toggle: bool,
    /// Before/after side by side on the canvas.
    split: bool,
    /// Tint the shown result by where its pixels came from.
    source_tint: bool,
    /// For waking the UI from background threads (set at the first frame).
    repaint_handle: Option<egui::Context>,
    ref_thumbs: ThumbCache,
    /// Show times in the status bar: the UI frame time, a fill's seconds (off for snapshots,
    /// which must not vary).
    show_frame_time: bool,
    /// The previous frame's CPU time as eframe measures it (UI, tessellation, rendering).
    frame_total_ms: f32,
    /// Print every frame's time to stderr (REALFILL_FRAME_LOG=1), for measuring.
    frame_log: bool,
    /// Ask the system for file dialogs; off once it had none that answered (then, and in
    /// tests, realfill's own dialog is used).
    system_dialogs: bool,
    /// realfill's own file dialog, while it is open.
    file_browser: Option<file_browser::FileBrowser>,
    /// The references of the photo open before this one, and that photo's name, while the
    /// person is asked whether this photo keeps them.
    refs_offer: Option<(Vec<Arc<Photo>>, String)>,
}

/// Thumbnails of reference photos, made once per photo.
#[derive(Default)]
pub struct ThumbCache {
    items: Vec<(Arc<Photo>, egui::TextureHandle)>,
}

impl ThumbCache {
    pub fn get(&mut self, ctx: &egui::Context, p: &Arc<Photo>) -> egui::TextureHandle {
        if let Some((_, t)) = self.items.iter().find(|(q, _)| Arc::ptr_eq(q, p)) {
            return t.clone();
        }
        let tex = ctx.load_texture(
            format!("ref-{}", self.items.len()),
            thumbnail(&p.original, 160),
            egui::TextureOptions::LINEAR,
        );
        // Forget thumbnails of removed references.
        self.items.retain(|(q, _)| Arc::strong_count(q) > 1);
        self.items.push((p.clone(), tex.clone()));
        tex
    }
}

impl RealfillApp {
    pub fn new(doc: Option<Document>, settings: AppSettings) -> RealfillApp {
        let (tasks_tx, tasks_rx) = unbounded();
        RealfillApp {
            doc,
            settings_saved: settings.clone(),
            settings_saved_at: None,
            settings,
            persist: false,
            job_template: FillSettings::default(),
            engine: None,
            running: None,
            learning: LearnProgress::default(),
            preview: None,
            native_preview: Vec::new(),
            native_pending: Default::default(),
            candidates: Vec::new(),
            selected: 0,
            applied_revision: None,
            messages: Vec::new(),
            backend: None,
            server_lost: None,
            status: String::new(),
            canvas: Canvas::default(),
            show_before: false,
            project_path: None,
            saved_revision: 0,
            pending: None,
            after_save: None,
            close_confirmed: false,
            show_shortcuts: false,
            clipboard: Default::default(),
            last_title: String::new(),
            tasks_tx,
            tasks_rx,
            pending_tasks: 0,
            commands: Vec::new(),
            frame_ms: 0.0,
            show_before_toggle: false,
            split: false,
            source_tint: false,
            repaint_handle: None,
            ref_thumbs: ThumbCache::default(),
            show_frame_time: true,
            frame_total_ms: 0.0,
            frame_log: crate::switches::get().frame_log,
            system_dialogs: true,
            file_browser: None,
            refs_offer: None,
            handover: None,
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
        f(&mut self.job_template);
        self
    }

    /// Use realfill's own file dialog, never the system's (tests: no dialog outside the app).
    pub fn with_builtin_file_dialogs(mut self) -> RealfillApp {
        self.system_dialogs = false;
        self
    }

    /// realfill's own file dialog, while it is open.
    pub fn file_browser(&self) -> Option<&file_browser::FileBrowser> {
        self.file_browser.as_ref()
    }

    /// Hide the frame time and a fill's seconds in the status bar (snapshots must not vary).
    pub fn without_frame_time(mut self) -> RealfillApp {
        self.show_frame_time = false;
        self
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
        self.source_tint
    }

    pub fn settings_mut(&mut self) -> &mut AppSettings {
        &mut self.settings
    }
    pub fn canvas(&self) -> &Canvas {
        &self.canvas
    }
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }
    /// The candidate shown on the canvas.
    pub fn selected(&self) -> usize {
        self.selected
    }
    pub fn preview(&self) -> Option<&Preview> {
        self.preview.as_ref()
    }
    /// The running fill's finished native-resolution strips.
    pub fn native_preview(&self) -> &[canvas::NativeTexture] {
        &self.native_preview
    }
    pub fn learning(&self) -> &LearnProgress {
        &self.learning
    }
    pub fn status(&self) -> &str {
        &self.status
    }
    /// Where jobs compute, as the engine described it (None until it started, or when its GPU
    /// server was lost).
    pub fn backend_description(&self) -> Option<&str> {
        self.backend.as_deref()
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Ask for `c`; it is carried out at the end of the frame.
    pub fn push(&mut self, c: Command) {
        self.commands.push(c);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.messages.push(Message { level: Level::Info, text: text.into(), action: None });
    }
    pub fn warn(&mut self, text: impl Into<String>) {
        self.messages.push(Message { level: Level::Warning, text: text.into(), action: None });
    }
    pub fn error(&mut self, text: impl Into<String>) {
        self.messages.push(Message { level: Level::Error, text: text.into(), action: None });
    }

    pub fn open_target(&mut self, p: Photo) {
        self.forget_previous_notes();
        self.handover = None;
        if p.transparent.is_some() {
            self.info(format!("{}: transparent pixels are part of the fill region (shown in red)", p.path.display()));
        }
        let doc = Document::new(p);
        if let Some(mut old) = self.doc.take() {
            // Another photo is another scene unless the person says otherwise (`refs_prompt`).
            let refs = std::mem::take(&mut old.refs);
            if !refs.is_empty() {
                let from = old.target.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.refs_offer = Some((refs, from));
            }
            // The old photo and its undo history: freed off the UI thread.
            std::thread::spawn(move || drop(old));
        }
        self.saved_revision = doc.revision;
        // A photo that exists on disk (not a fill result or the demo's scaled copy).
        if doc.target.path.is_file() {
            self.settings.remember(&doc.target.path);
        }
        self.doc = Some(doc);
        self.drop_candidates();
        self.project_path = None;
        self.canvas.view.fit_pending = true;
    }

    /// Another document opens: what was said about the previous one (the demo's hint, the
    /// last fill's status) no longer applies. Errors stay until dismissed.
    fn forget_previous_notes(&mut self) {
        self.messages.retain(|m| m.level == Level::Error);
        self.status.clear();
    }

    /// Whether the photo just opened is asked to keep the previous photo's references.
    pub fn asks_to_keep_references(&self) -> bool {
        self.refs_offer.is_some()
    }

    /// Asked once when another photo opens over one with references: they belong to the
    /// previous scene, so the new photo starts without them unless the person keeps them.
    fn refs_prompt(&mut self, ctx: &egui::Context) {
        let Some((refs, from)) = &self.refs_offer else { return };
        let mut keep = None;
        egui::Modal::new(egui::Id::unique("keep-references")).show(ctx, |ui| {
            let n = refs.len();
            let photos = if n == 1 { "reference photo" } else { "reference photos" };
            ui.heading(format!("Keep the {n} {photos} of {from}?"));
            ui.label("References show the scene of the photo being filled. Keep them only if this photo shows the same scene.");
            ui.horizontal(|ui| {
                if ui.button("Keep references").clicked() {
                    keep = Some(true);
                }
                if ui.button("New scene").clicked() || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                    keep = Some(false);
                }
            });
        });
        let Some(keep) = keep else { return };
        let Some((refs, _)) = self.refs_offer.take() else { return };
        match (keep, &mut self.doc) {
            (true, Some(doc)) => {
                // Through the same checks as added photos: the new photo may be one of them.
                let notes = doc.add_shared_refs(refs);
                self.info("kept the references of the previous photo");
                for n in notes {
                    self.warn(n);
                }
            }
            _ => {
                std::thread::spawn(move || drop(refs));
            }
        }
    }

    fn engine(&mut self, ctx: &egui::Context) -> &Engine {
        let backend = self.settings.engine_backend();
        self.engine.get_or_insert_with(|| {
            let ctx = ctx.clone();
            Engine::start_with_waker(backend, Some(Arc::new(move || ctx.request_repaint())))
        })
    }

    /// A job ended without a result (or none was running): the canvas keeps what it had.
    fn job_failed(&mut self, message: String) {
        self.preview = None;
        self.native_preview.clear();
        self.native_pending.clear();
        if self.running.take().is_some() {
            self.status = "failed".into();
        }
        self.error(message);
    }

    /// Compute on the GPU server (or on this computer) from the next job on; the engine
    /// restarts at once, so a GPU server is connected (or found unreachable) now rather than at
    /// the next Fill. The old engine is let go off the UI thread (a worker still connecting
    /// would hold the frame).
    fn use_gpu_server(&mut self, ctx: &egui::Context, on: bool) {
        self.settings.use_gpu_server = on;
        self.server_lost = None;
        self.backend = None;
        if let Some(old) = self.engine.take() {
            std::thread::spawn(move || drop(old));
        }
        self.engine(ctx);
    }

    /// Whether jobs compute on a GPU server, and its trouble if it has any.
    pub fn gpu_server_state(&self) -> (bool, Option<&str>) {
        (self.settings.use_gpu_server, self.server_lost.as_deref())
    }

    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// The run panel's settings on the job template; `seed` is this candidate's (the learned
    /// model keeps the run's seed, so candidates share it).
    fn job_settings(&self, seed: u64) -> crate::Result<FillSettings> {
        let mut s = self.job_template.clone();
        s.apply_run(&self.settings.run.clamped())?;
        s.seed = seed;
        s.result_photo = true;
        Ok(s)
    }

    /// Start building the scene for a Learn or Fill off the UI thread; the job is submitted
    /// when it arrives (`scene_ready`). The document is copied as it is now (photos shared).
    fn start_job(&mut self, kind: JobKind) {
        if self.busy() {
            return;
        }
        let Some(doc) = &self.doc else { return };
        let (target, refs, mask, extension) = (doc.target.clone(), doc.refs.clone(), doc.mask.clone(), doc.extension);
        self.learning = LearnProgress::default();
        self.running = Some(Running::Preparing(kind));
        self.status = "preparing…".into();
        self.spawn(move || {
            let scene = document::scene_of(target, refs, &mask, extension).map(|s| {
                let fill_box = s.mask.bbox();
                (s, fill_box)
            });
            Task::Scene(kind, scene)
        });
    }

    /// The scene for the job asked for has been built: submit it (unless it was cancelled).
    pub(crate) fn scene_ready(&mut self, kind: JobKind, scene: tasks::SceneResult) {
        if !matches!(self.running, Some(Running::Preparing(k)) if k == kind) {
            return;
        }
        self.running = None;
        let (scene, fill_box) = match scene {
            Ok((s, b)) => (Arc::new(s), b),
            Err(e) => {
                self.status.clear();
                return self.error(e.to_string());
            }
        };
        let settings = match self.job_settings(self.settings.run.seed) {
            Ok(s) => s,
            Err(e) => return self.error(e.to_string()),
        };
        let Some(ctx) = self.repaint_handle.clone() else { return };
        match kind {
            JobKind::Learn => {
                self.engine(&ctx).submit(Job::Learn { scene, settings });
                self.running = Some(Running::Learn);
                self.status = "learning the scene…".into();
            }
            JobKind::Fill => {
                self.drop_candidates();
                self.selected = 0;
                self.applied_revision = None;
                let candidates = self.settings.run.clamped().candidates;
                self.engine(&ctx).submit(Job::Fill { scene: scene.clone(), settings: settings.clone(), candidates });
                let remaining = candidates - 1;
                self.running = Some(Running::Fill { scene, fill_box, settings, remaining });
                self.status = "filling…".into();
            }
        }
    }

    /// Whether the document has anything to fill (cheap: the mask keeps its painted count).
    pub fn has_fill_region(&self) -> bool {
        self.doc.as_ref().is_some_and(|d| d.has_fill_region())
    }

    fn cancel(&mut self) {
        if matches!(self.running, Some(Running::Preparing(_))) {
            // The scene being built is dropped when it arrives.
            self.running = None;
            self.status = "cancelled; the canvas is as it was".into();
            return;
        }
        if let Some(e) = &self.engine
            && self.running.is_some()
        {
            e.cancel();
            self.status = "cancelling…".into();
        }
    }

    /// Apply the engine's events; only the newest preview is uploaded.
    fn drain_events(&mut self, ctx: &egui::Context) {
        let Some(engine) = &self.engine else { return };
        let events: Vec<Event> = engine.events().try_iter().collect();
        let mut newest_preview = None;
        for ev in events {
            match ev {
                Event::Backend { description, warning } => {
                    if let Some(w) = warning {
                        self.warn(w);
                    }
                    self.backend = Some(description);
                }
                Event::Status(s) => self.status = s,
                Event::Warning(w) => self.warn(w),
                Event::Learning { step, total, loss, elapsed_s } => {
                    self.learning.step = step;
                    self.learning.total = total;
                    self.learning.elapsed_s = elapsed_s;
                    self.learning.losses.push(loss);
                }
                Event::Preview { step, total, image } => {
                    newest_preview = Some((step, total, image));
                    self.handover = None;
                    self.native_preview.clear();
                    self.native_pending.clear();
                }
                Event::NativeTile(tile) => self.native_pending.push_back(tile),
                Event::Learned { cached } => {
                    self.running = None;
                    self.status = if cached { "the scene model was already learned".into() } else { "learned".into() };
                    if self.settings.run.engine == EngineKind::StableDiffusion {
                        // Learned into Stable Diffusion's LoRA: Fill with Stable Diffusion uses it.
                        self.status = if cached {
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
                Event::Done(out) => {
                    // The last preview and the finished strips stay on screen until the
                    // result's own texture is (`drop_handover_once_shown`): no flash of the
                    // hole between them.
                    newest_preview = None;
                    if let Some(p) = self.preview.take() {
                        self.handover = Some((p, std::mem::take(&mut self.native_preview)));
                    }
                    self.native_preview.clear();
                    self.native_pending.clear();
                    self.on_fill_done(ctx, *out);
                }
                Event::Failed(e) => {
                    newest_preview = None;
                    self.job_failed(e);
                }
                Event::ServerLost(e) => {
                    newest_preview = None;
                    self.backend = None;
                    self.server_lost = Some(e.clone());
                    self.job_failed(format!("{e} (Run panel, GPU server: Use this computer)"));
                }
                Event::Cancelled { .. } => {
                    newest_preview = None;
                    self.preview = None;
                    self.native_preview.clear();
                    self.native_pending.clear();
                    self.running = None;
                    self.status = "cancelled; the canvas is as it was".into();
                }
            }
        }
        if let (Some((step, total, image)), Some(Running::Fill { scene, fill_box, .. })) =
            (newest_preview, &self.running)
        {
            let img = canvas::preview_image(&image, &scene.mask);
            match &mut self.preview {
                Some(p) if p.tex.size() == img.size => {
                    // Only the fill region changes between steps: upload just its rectangle.
                    let (pos, part) = canvas::fill_region_of(&img, *fill_box, scene.canvas_size());
                    p.tex.set_partial(pos, part, egui::TextureOptions::LINEAR);
                    p.step = step;
                    p.total = total;
                }
                _ => {
                    let tex = ctx.load_texture("preview", img, egui::TextureOptions::LINEAR);
                    self.preview = Some(Preview { step, total, tex });
                }
            }
            self.status = format!("denoising step {step} of {total}");
        }
        self.upload_native_strips(ctx);
    }

    /// After a fill, the last preview goes in the frame the result's texture is drawn in.
    fn drop_handover_once_shown(&mut self) {
        if self.handover.is_some() && self.doc.as_ref().is_none_or(|d| self.canvas.shows_target_of(d)) {
            self.handover = None;
        }
    }

    /// Whether a preview is on the canvas: the running fill's, or the last one of a finished
    /// fill while its result's texture is being made.
    pub fn preview_on_canvas(&self) -> bool {
        self.preview.is_some() || self.handover.is_some()
    }

    /// Upload finished native-resolution strips, up to about a megabyte of texture per frame
    /// (a camera photo's hole is tens of them, and all may arrive within one frame).
    fn upload_native_strips(&mut self, ctx: &egui::Context) {
        const PIXELS_PER_FRAME: usize = 1 << 18;
        let Some(Running::Fill { scene, .. }) = &self.running else {
            self.native_pending.clear();
            return;
        };
        let mut budget = PIXELS_PER_FRAME;
        while budget > 0
            && let Some(tile) = self.native_pending.pop_front()
        {
            budget = budget.saturating_sub(tile.rgb.width * tile.rgb.height);
            for (pos, img) in canvas::native_tile_images(&tile, &scene.mask) {
                let tex = ctx.load_texture(format!("native-{}-{}", pos[0], pos[1]), img, egui::TextureOptions::LINEAR);
                self.native_preview.push(canvas::NativeTexture {
                    pos,
                    tex,
                    rows_done: tile.rows_done,
                    rows: tile.rows,
                });
            }
            self.status = format!("adding full-resolution detail: {} of {} rows", tile.rows_done, tile.rows);
        }
        if !self.native_pending.is_empty() {
            ctx.request_repaint();
        }
    }

    fn on_fill_done(&mut self, ctx: &egui::Context, mut out: crate::engine::FillOutput) {
        let Some(Running::Fill { scene, fill_box, settings, remaining }) = self.running.take() else { return };
        let seed = out.seed;
        let seconds = out.timings.total_s;
        // From the working-size fill: the same picture at 160 px, without scanning a camera
        // photo on the UI thread.
        // As 8-bit values: the `image` crate takes 32-bit float images as linear light and
        // would encode them to sRGB again (a washed-out thumbnail).
        let bytes: Vec<u8> = out.working.data.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
        let working = image::DynamicImage::ImageRgb8(
            image::ImageBuffer::from_raw(out.working.width as u32, out.working.height as u32, bytes)
                .expect("raster size matches its data"),
        );
        let thumb =
            ctx.load_texture(format!("candidate-{seed}"), thumbnail(&working, 160), egui::TextureOptions::LINEAR);
        let photo = match out.photo.take() {
            Some(p) => p,
            None => {
                let image = std::mem::replace(&mut out.image, image::DynamicImage::new_rgb8(1, 1));
                Arc::new(Photo::from_image_with(scene.target.path.clone(), image, None, scene.target.metadata.clone()))
            }
        };
        let first = self.candidates.is_empty();
        let sources = Arc::new(std::mem::take(&mut out.sources));
        if first {
            self.offer_for_invented(&sources, out.timings.engine);
        }
        let ref_names = scene
            .refs
            .iter()
            .map(|r| r.path.file_name().map_or_else(|| "reference".into(), |n| n.to_string_lossy().into_owned()))
            .collect();
        self.candidates.push(Candidate { seed, agreement: out.agreement, photo, thumb, sources, ref_names });
        if first && let Some(doc) = &mut self.doc {
            doc.accept_fill(self.candidates[0].photo.clone());
            self.applied_revision = Some(doc.revision);
            self.selected = 0;
        }
        let engine = match out.timings.engine {
            EngineKind::StableDiffusion => "Stable Diffusion".to_string(),
            e => format!("the {}", e.label()),
        };
        // (Snapshots must not vary: without times, the seconds are left out.)
        self.status = if self.show_frame_time {
            format!("filled in {seconds:.1} s with {engine} (seed {seed})")
        } else {
            format!("filled with {engine} (seed {seed})")
        };
        if remaining == 0 && self.candidates.len() > 1 {
            self.rank_candidates();
        }
        // The job's full-resolution buffers (the composite, and the scene's mask after the last
        // candidate) are freed off the UI thread: hundreds of megabytes on a camera photo.
        // The job fills every candidate of one preparation; the next is already under way.
        if remaining > 0 {
            self.running = Some(Running::Fill { scene, fill_box, settings, remaining: remaining - 1 });
            std::thread::spawn(move || drop(out));
        } else {
            std::thread::spawn(move || drop((out, scene)));
        }
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
                    self.warn(note);
                }
                self.info(format!("pasted a {w}×{h} image as a reference"));
            }
            (None, true) => self.error("open a photo first: a reference belongs to a photo"),
            (_, false) => self.photo_opened(photo),
        }
    }

    /// Forget the candidates, freeing their photos (hundreds of megabytes each on a camera
    /// photo) off the UI thread.
    pub(crate) fn drop_candidates(&mut self) {
        let old = std::mem::take(&mut self.candidates);
        if !old.is_empty() {
            std::thread::spawn(move || drop(old));
        }
    }

    /// Much of the fill invented (no reference shows that part): say so, and offer Stable
    /// Diffusion when its folder is set (it imagines what no reference shows; the patch engine
    /// can only continue the photo's own texture there).
    fn offer_for_invented(&mut self, sources: &crate::engine::sources::Sources, engine: EngineKind) {
        let invented = sources.invented();
        if invented < INVENTED_OFFER || engine == EngineKind::StableDiffusion {
            return;
        }
        let share = format!("{:.0} % of the fill is invented: no reference aligns with that part", 100.0 * invented);
        if self.settings.run.sd.model.is_some() {
            self.messages.push(Message {
                level: Level::Info,
                text: format!("{share}. Stable Diffusion can imagine it."),
                action: Some(("Fill with Stable Diffusion".into(), Command::FillWithStableDiffusion)),
            });
        } else {
            self.info(format!(
                "{share} (Sources shows which). A photo that shows it, added as a reference, or a Stable Diffusion \
                 folder (Run panel) would fill it."
            ));
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
        let untouched = self.doc.as_ref().is_some_and(|d| Some(d.revision) == self.applied_revision);
        if untouched {
            self.undo();
            self.start_job(JobKind::Fill);
        } else {
            self.info(
                "Engine: Stable Diffusion. The photo changed since that fill: brush what to fill and press Fill.",
            );
        }
    }

    /// Order candidates best first; show the best unless the user picked or edited meanwhile.
    fn rank_candidates(&mut self) {
        let shown_seed = self.candidates.get(self.selected).map(|c| c.seed);
        let untouched = self.selected == 0 && self.doc.as_ref().map(|d| d.revision) == self.applied_revision;
        self.candidates.sort_by(|a, b| b.agreement.unwrap_or(0.0).total_cmp(&a.agreement.unwrap_or(0.0)));
        if untouched {
            if self.candidates[0].seed != shown_seed.unwrap_or(u64::MAX) {
                self.pick_candidate(0);
            }
            self.selected = 0;
        } else {
            self.selected = self.candidates.iter().position(|c| Some(c.seed) == shown_seed).unwrap_or(0);
        }
    }

    /// Show candidate `i` on the canvas.
    fn pick_candidate(&mut self, i: usize) {
        let (Some(doc), Some(c)) = (&mut self.doc, self.candidates.get(i)) else { return };
        if self.applied_revision == Some(doc.revision) {
            doc.replace_target(c.photo.clone());
        } else {
            doc.accept_fill(c.photo.clone());
        }
        self.applied_revision = Some(doc.revision);
        self.selected = i;
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
            Command::Cancel => self.cancel(),
            Command::PickCandidate(i) if editable => self.pick_candidate(i),
            Command::SetTool(t) => self.canvas.tool = Some(t),
            Command::Fit => self.canvas.view.fit_pending = true,
            Command::ActualPixels => {
                let area = self.canvas.area;
                let pointer = ctx.input(|i| i.pointer.hover_pos());
                self.canvas.view.actual_pixels(area, pointer, ctx.pixels_per_point());
            }
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
                // Keep the photo still on screen when the canvas grows left or up.
                let shift = egui::vec2(e.left as f32 - old.left as f32, e.top as f32 - old.top as f32);
                self.canvas.view.offset -= shift * self.canvas.view.zoom;
            }
            Command::ToggleBefore => self.show_before_toggle = !self.show_before_toggle,
            Command::ToggleSplit => self.split = !self.split,
            Command::ToggleSourceTint => self.source_tint = !self.source_tint,
            Command::FillWithStableDiffusion => self.fill_again_with_stable_diffusion(),
            Command::Save => match self.project_path.clone() {
                Some(p) if self.doc.is_some() => self.save_project(p),
                _ => self.open_dialog(dialogs::Dialog::SaveProject),
            },
            Command::Zoom(f) => {
                let area = self.canvas.area;
                self.canvas.view.zoom_at(area, area.center(), f);
            }
            Command::ToggleShortcuts => self.show_shortcuts = !self.show_shortcuts,
            Command::OpenRecent(p) => self.open_recent(p),
            Command::Paste(kind) => {
                let clip = self.clipboard.clone();
                self.spawn(move || tasks::Task::Pasted(kind, clip.paste()));
            }
            Command::CopyImage => {
                if let Some(d) = &self.doc {
                    let (clip, img) = (self.clipboard.clone(), d.target.original.clone());
                    self.spawn(move || {
                        tasks::Task::Note(clip.copy(&img).map(|_| "the image is on the clipboard".to_string()))
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
            Command::DismissMessage(i) => {
                if i < self.messages.len() {
                    self.messages.remove(i);
                }
            }
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
        if let Some(project) = files.iter().find(|f| is_project(f)) {
            self.spawn(tasks::open_project(project.clone()));
        } else if on_refs {
            self.spawn(tasks::load_refs(files, self.doc.as_ref().map(|d| d.canvas_size())));
        } else {
            let mut it = files.into_iter();
            if let Some(t) = it.next() {
                self.spawn(tasks::load_target(t));
            }
            let rest: Vec<PathBuf> = it.collect();
            if !rest.is_empty() {
                self.spawn(tasks::load_refs(rest, self.doc.as_ref().map(|d| d.canvas_size())));
            }
        }
    }

    /// Run a background task; its result arrives as a `Task` in a later frame.
    pub fn spawn(&mut self, work: impl FnOnce() -> Task + Send + 'static) {
        let tx = self.tasks_tx.clone();
        let ctx = self.repaint_handle.clone();
        self.pending_tasks += 1;
        std::thread::spawn(move || {
            let _ = tx.send(work());
            if let Some(c) = ctx {
                c.request_repaint();
            }
        });
    }

    /// Wait (in tests) until background tasks have reported.
    pub fn wait_for_tasks(&mut self) {
        while self.pending_tasks > 0 {
            match self.tasks_rx.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(t) => {
                    self.pending_tasks -= 1;
                    self.apply_task(t);
                }
                Err(_) => break,
            }
        }
    }

    fn drain_tasks(&mut self) {
        while let Ok(t) = self.tasks_rx.try_recv() {
            self.pending_tasks = self.pending_tasks.saturating_sub(1);
            self.apply_task(t);
        }
    }

    /// Write changed settings at most every two seconds (a dragged value changes every
    /// frame), and on exit.
    fn save_settings_if_changed(&mut self) {
        let due = self.settings_saved_at.is_none_or(|t| t.elapsed().as_secs_f32() > 2.0);
        if self.persist && due && self.settings != self.settings_saved {
            self.settings_saved_at = Some(Instant::now());
            if let Err(e) = self.settings.save() {
                self.warn(format!("settings not saved: {e}"));
            }
            self.settings_saved = self.settings.clone();
        }
    }

    /// The whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let t0 = Instant::now();
        let ctx = ui.ctx().clone();
        if self.repaint_handle.is_none() {
            self.repaint_handle = Some(ctx.clone());
        }
        self.drain_tasks();
        self.drain_events(&ctx);
        let pressed = commands::pressed(&ctx);
        // While a prompt or dialog is open its keys are its own (Esc answers it; Ctrl+Enter
        // must not start a fill under a question about the references).
        let modal = self.pending.is_some() || self.refs_offer.is_some() || self.file_browser.is_some();
        if !modal {
            self.commands.extend(pressed);
        }
        self.clipboard_events(&ctx);
        // Holding \\ shows the photo before the last fill (a held key, not a command).
        let held = !ctx.egui_wants_keyboard_input() && ui.input(|i| i.key_down(egui::Key::Backslash));
        self.show_before = held || self.show_before_toggle;
        panels::top_bar(self, ui);
        panels::bottom_bar(self, ui);
        let refs_rect = panels::references_panel(self, ui);
        panels::run_panel(self, ui);
        egui::CentralPanel::default().frame(egui::Frame::NONE).show(ui, |ui| {
            let (preview, native) = match (&self.preview, &self.handover) {
                (Some(p), _) => (Some(p), &self.native_preview),
                (None, Some((p, native))) => (Some(p), native),
                (None, None) => (None, &self.native_preview),
            };
            let preview = preview.map(|p| (&p.tex, p.step, p.total));
            let editable = self.running.is_none();
            match &mut self.doc {
                Some(doc) => {
                    // The tint is of the result on screen, untouched since.
                    let shows_result = self.applied_revision == Some(doc.revision);
                    let tint = self
                        .candidates
                        .get(self.selected)
                        .filter(|_| self.source_tint && shows_result)
                        .map(|c| (&c.sources, c.ref_names.as_slice()));
                    let overlay = canvas::Overlay {
                        editable,
                        preview,
                        native,
                        show_before: self.show_before,
                        split: self.split,
                        tint,
                    };
                    self.canvas.show(ui, doc, overlay, &mut self.settings.brush_radius);
                }
                None => {
                    ui.centered_and_justified(|ui| {
                        ui.label("Open a photo (File, Open photo…), or drop one here.");
                    });
                }
            }
        });
        self.drop_handover_once_shown();
        self.dropped_files(ui, refs_rect);
        if ctx.input(|i| i.viewport().close_requested()) {
            self.request_close(&ctx);
        }
        self.prompt(ui);
        self.refs_prompt(&ctx);
        self.show_file_browser(&ctx);
        panels::shortcut_list(self, ui);
        self.apply_commands(&ctx);
        let title = self.title();
        if title != self.last_title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.last_title = title;
        }
        // Keep polling while a background task (dialog, load) is out.
        if self.pending_tasks > 0 {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
        let ms = t0.elapsed().as_secs_f32() * 1000.0;
        self.frame_ms = if self.frame_ms == 0.0 { ms } else { 0.9 * self.frame_ms + 0.1 * ms };
    }
}

fn is_project(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == crate::scene::project::EXTENSION)
}

fn load_demo() -> crate::Result<Document> {
    let (target, mask, refs) = crate::scene::demo::load()?;
    let mut doc = Document::new(target);
    if (mask.width, mask.height) == (doc.mask.width, doc.mask.height) {
        doc.mask = document::PaintMask::from_mask(&mask);
    }
    doc.add_refs(refs);
    Ok(doc)
}

fn thumbnail(img: &image::DynamicImage, side: u32) -> egui::ColorImage {
    let t = img.thumbnail(side, side).to_rgba8();
    egui::ColorImage::from_rgba_unmultiplied([t.width() as usize, t.height() as usize], t.as_raw())
}

impl eframe::App for RealfillApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        // eframe's measure of the previous frame: UI code plus tessellation and rendering.
        if let Some(cpu) = frame.info().cpu_usage {
            self.frame_total_ms = cpu * 1000.0;
            if self.frame_log {
                eprintln!("frame {:.2} ms busy={}", self.frame_total_ms, self.busy());
            }
        }
        self.show(ui);
        self.save_settings_if_changed();
    }

    fn on_exit(&mut self) {
        self.persist_now();
    }
}

impl RealfillApp {
    fn persist_now(&mut self) {
        if self.persist {
            let _ = self.settings.save();
        }
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
    app.persist = true;
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
    eframe::run_native("realfill", options, Box::new(|_cc| Ok(Box::new(app)))).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window ({e}); run the app on a desktop (DISPLAY or WAYLAND_DISPLAY set), \
                 or fill without one: `realfill fill --demo --out demo-filled.png`, `realfill fill --help`"
        )
    })
}
