//! The engine and the job it works on, as the app shows it: the worker (started at the first
//! job, restarted when the person switches to or from a GPU server), the job running, learning
//! progress, the newest preview and the native-resolution strips, and the status line. The
//! engine's events are applied here; what they mean for the rest of the app (a learned model,
//! a finished candidate) goes back to the app as an `Outcome`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::candidates::Candidate;
use super::canvas::{self, NativeTexture};
use super::messages::Messages;
use super::settings::AppSettings;
use crate::engine::detail::NativeTile;
use crate::engine::{Engine, Event, FillOutput, FillSettings, Job};
use crate::scene::{Photo, RgbF, Scene};
use crate::settings::{EngineKind, RunSettings};
use crate::switches::Switches;

/// What the person asked the engine for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Learn,
    Fill,
}

/// A job's scene and its fill region's bounding box (`Mask::bbox`).
pub type SceneResult = crate::Result<(Scene, Option<(usize, usize, usize, usize)>)>;

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

/// An event whose meaning reaches beyond the job.
pub enum Outcome {
    /// Learning ended (or its model was in the cache).
    Learned { cached: bool },
    /// A candidate of the fill is done.
    Filled(Filled),
}

pub struct Filled {
    pub candidate: Candidate,
    /// The engine that filled it.
    pub engine: EngineKind,
    /// The fill's last candidate.
    pub last: bool,
}

/// A job's settings: the person's run settings on `template`, under the switches `sw`;
/// `seed` is this candidate's (the learned model keeps the run's seed, so candidates share it).
fn job_settings(template: &FillSettings, run: &RunSettings, seed: u64, sw: &Switches) -> crate::Result<FillSettings> {
    let mut s = template.clone().with_switches(sw)?;
    s.apply_run(&run.clamped())?;
    s.seed = seed;
    s.result_photo = true;
    Ok(s)
}

#[derive(Default)]
pub struct JobView {
    /// Template for every job (network size, cache use); its run settings come from the
    /// person's at each job. Tests make it tiny (`with_job_template`).
    pub(super) template: FillSettings,
    engine: Option<Engine>,
    pub(super) running: Option<Running>,
    pub(super) learning: LearnProgress,
    pub(super) preview: Option<Preview>,
    /// The newest preview among the events being applied: only it is uploaded.
    newest_preview: Option<(usize, usize, Arc<RgbF>)>,
    /// Previews received for the running job (a frame shows only the newest; one that arrives
    /// with the job's end is never shown).
    pub(super) previews_received: usize,
    /// Finished strips of the native-resolution fill of the running job (after its previews):
    /// uploaded, and still to upload (a few per frame, so frames stay short).
    pub(super) native_preview: Vec<NativeTexture>,
    native_pending: VecDeque<NativeTile>,
    /// The last preview (and its strips) of a finished fill, drawn until the result's texture
    /// is on screen.
    pub(super) handover: Option<(Preview, Vec<NativeTexture>)>,
    /// Where jobs compute, as the engine described it.
    pub(super) backend: Option<String>,
    /// Why the GPU server cannot be used (shown in the Run panel with "Use this computer").
    pub(super) server_lost: Option<String>,
    pub(super) status: String,
}

impl JobView {
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// The engine, started on the settings' backend the first time it is asked for.
    fn engine(&mut self, ctx: &egui::Context, settings: &AppSettings) -> &Engine {
        let backend = settings.engine_backend();
        self.engine.get_or_insert_with(|| {
            let ctx = ctx.clone();
            Engine::start_with_waker(backend, Some(Arc::new(move || ctx.request_repaint())))
        })
    }

    /// Start the engine again on the settings' backend now, so that a GPU server is connected
    /// (or found unreachable) at once rather than at the next Fill. The old engine is let go
    /// off the UI thread (a worker still connecting would hold the frame).
    pub fn restart_engine(&mut self, ctx: &egui::Context, settings: &AppSettings) {
        self.server_lost = None;
        self.backend = None;
        if let Some(old) = self.engine.take() {
            std::thread::spawn(move || drop(old));
        }
        self.engine(ctx, settings);
    }

    /// A job ended without a result (or none was running): the canvas keeps what it had.
    fn failed(&mut self, message: String, messages: &mut Messages) {
        self.preview = None;
        self.native_preview.clear();
        self.native_pending.clear();
        if self.running.take().is_some() {
            self.status = "failed".into();
        }
        messages.error(message);
    }

    /// The person's run settings on the job template, under the process's switches.
    fn job_settings(&self, run: &RunSettings, seed: u64) -> crate::Result<FillSettings> {
        job_settings(&self.template, run, seed, crate::switches::get())
    }

    /// The job's scene is being built off the UI thread (`scene_ready` takes it from there).
    pub fn preparing(&mut self, kind: JobKind) {
        self.learning = LearnProgress::default();
        self.previews_received = 0;
        self.running = Some(Running::Preparing(kind));
        self.status = "preparing…".into();
    }

    /// The scene for the job asked for has been built: submit it (unless it was cancelled).
    /// True when a fill was submitted (its candidates replace the last fill's).
    pub fn scene_ready(
        &mut self,
        kind: JobKind,
        scene: SceneResult,
        settings: &AppSettings,
        ctx: Option<egui::Context>,
        messages: &mut Messages,
    ) -> bool {
        if !matches!(self.running, Some(Running::Preparing(k)) if k == kind) {
            return false;
        }
        self.running = None;
        let (scene, fill_box) = match scene {
            Ok((s, b)) => (Arc::new(s), b),
            Err(e) => {
                self.status.clear();
                messages.error(e.to_string());
                return false;
            }
        };
        let job_settings = match self.job_settings(&settings.run, settings.run.seed) {
            Ok(s) => s,
            Err(e) => {
                messages.error(e.to_string());
                return false;
            }
        };
        let Some(ctx) = ctx else { return false };
        match kind {
            JobKind::Learn => {
                self.engine(&ctx, settings).submit(Job::Learn { scene, settings: job_settings });
                self.running = Some(Running::Learn);
                self.status = "learning the scene…".into();
                false
            }
            JobKind::Fill => {
                let candidates = settings.run.clamped().candidates;
                let job = Job::Fill { scene: scene.clone(), settings: job_settings.clone(), candidates };
                self.engine(&ctx, settings).submit(job);
                let remaining = candidates - 1;
                self.running = Some(Running::Fill { scene, fill_box, settings: job_settings, remaining });
                self.status = "filling…".into();
                true
            }
        }
    }

    pub fn cancel(&mut self) {
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

    /// The engine's events since the last frame (None before the engine started).
    pub fn take_events(&self) -> Option<Vec<Event>> {
        self.engine.as_ref().map(|e| e.events().try_iter().collect())
    }

    /// Apply one event to the job's state. `times`: the status says how long a fill took.
    pub fn apply(&mut self, ctx: &egui::Context, ev: Event, messages: &mut Messages, times: bool) -> Option<Outcome> {
        match ev {
            Event::Backend { description, warning } => {
                if let Some(w) = warning {
                    messages.warn(w);
                }
                self.backend = Some(description);
            }
            Event::Status(s) => self.status = s,
            Event::Warning(w) => messages.warn(w),
            Event::Learning { step, total, loss, elapsed_s } => {
                self.learning.step = step;
                self.learning.total = total;
                self.learning.elapsed_s = elapsed_s;
                self.learning.losses.push(loss);
            }
            Event::Preview { step, total, image } => {
                self.previews_received += 1;
                self.newest_preview = Some((step, total, image));
                self.handover = None;
                self.native_preview.clear();
                self.native_pending.clear();
            }
            Event::NativeTile(tile) => self.native_pending.push_back(tile),
            Event::Learned { cached } => {
                self.running = None;
                self.status = if cached { "the scene model was already learned".into() } else { "learned".into() };
                return Some(Outcome::Learned { cached });
            }
            Event::Done(out) => {
                // The last preview and the finished strips stay on screen until the result's
                // own texture is (`handover`): no flash of the hole between them.
                self.newest_preview = None;
                if let Some(p) = self.preview.take() {
                    self.handover = Some((p, std::mem::take(&mut self.native_preview)));
                }
                self.native_preview.clear();
                self.native_pending.clear();
                return self.candidate_done(ctx, *out, times).map(Outcome::Filled);
            }
            Event::Failed(e) => {
                self.newest_preview = None;
                self.failed(e, messages);
            }
            Event::ServerLost(e) => {
                self.newest_preview = None;
                self.backend = None;
                self.server_lost = Some(e.clone());
                self.failed(format!("{e} (Run panel, GPU server: Use this computer)"), messages);
            }
            Event::Cancelled { .. } => {
                self.newest_preview = None;
                self.preview = None;
                self.native_preview.clear();
                self.native_pending.clear();
                self.running = None;
                self.status = "cancelled; the canvas is as it was".into();
            }
        }
        None
    }

    /// After the events of a frame: upload the newest preview (only the fill region changes
    /// between steps) and some of the native strips.
    pub fn upload(&mut self, ctx: &egui::Context) {
        if let (Some((step, total, image)), Some(Running::Fill { scene, fill_box, .. })) =
            (self.newest_preview.take(), &self.running)
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
                self.native_preview.push(NativeTexture { pos, tex, rows_done: tile.rows_done, rows: tile.rows });
            }
            self.status = format!("adding full-resolution detail: {} of {} rows", tile.rows_done, tile.rows);
        }
        if !self.native_pending.is_empty() {
            ctx.request_repaint();
        }
    }

    /// A candidate of the running fill is done: it becomes a `Candidate` (thumbnail, photo,
    /// sources), and the job goes on with the next one, if any.
    fn candidate_done(&mut self, ctx: &egui::Context, mut out: FillOutput, times: bool) -> Option<Filled> {
        let Some(Running::Fill { scene, fill_box, settings, remaining }) = self.running.take() else { return None };
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
        let thumb = ctx.load_texture(
            format!("candidate-{seed}"),
            canvas::thumbnail(&working, 160),
            egui::TextureOptions::LINEAR,
        );
        let photo = match out.photo.take() {
            Some(p) => p,
            None => {
                let image = std::mem::replace(&mut out.image, image::DynamicImage::new_rgb8(1, 1));
                Arc::new(Photo::from_image_with(scene.target.path.clone(), image, None, scene.target.metadata.clone()))
            }
        };
        let sources = Arc::new(std::mem::take(&mut out.sources));
        let ref_names = scene
            .refs
            .iter()
            .map(|r| r.path.file_name().map_or_else(|| "reference".into(), |n| n.to_string_lossy().into_owned()))
            .collect();
        let candidate = Candidate { seed, agreement: out.agreement, photo, thumb, sources, ref_names };
        let engine = out.timings.engine;
        let name = match engine {
            EngineKind::StableDiffusion => "Stable Diffusion".to_string(),
            e => format!("the {}", e.label()),
        };
        // (Snapshots must not vary: without times, the seconds are left out.)
        self.status = if times {
            format!("filled in {} with {name} (seed {seed})", took(seconds))
        } else {
            format!("filled with {name} (seed {seed})")
        };
        // The job's full-resolution buffers (the composite, and the scene's mask after the last
        // candidate) are freed off the UI thread: hundreds of megabytes on a camera photo.
        // The job fills every candidate of one preparation; the next is already under way.
        if remaining > 0 {
            self.running = Some(Running::Fill { scene, fill_box, settings, remaining: remaining - 1 });
            std::thread::spawn(move || drop(out));
        } else {
            std::thread::spawn(move || drop((out, scene)));
        }
        Some(Filled { candidate, engine, last: remaining == 0 })
    }

    /// Whether a preview is on the canvas: the running fill's, or the last one of a finished
    /// fill while its result's texture is being made.
    pub fn preview_on_canvas(&self) -> bool {
        self.preview.is_some() || self.handover.is_some()
    }

    /// What the canvas draws over the photo: the preview (texture, step, total) and the
    /// native strips, of the running fill or of the one just finished.
    pub fn on_canvas(&self) -> (Option<(&egui::TextureHandle, usize, usize)>, &[NativeTexture]) {
        let (preview, native) = match (&self.preview, &self.handover) {
            (Some(p), _) => (Some(p), &self.native_preview),
            (None, Some((p, native))) => (Some(p), native),
            (None, None) => (None, &self.native_preview),
        };
        (preview.map(|p| (&p.tex, p.step, p.total)), native)
    }

    /// The window title's prefix while a job runs ("learning 3/600 — ", "filling — ").
    pub fn title_progress(&self) -> String {
        let l = &self.learning;
        match &self.running {
            Some(Running::Learn) if l.total > 0 => format!("learning {}/{} — ", l.step, l.total),
            Some(Running::Fill { .. }) => "filling — ".into(),
            _ => String::new(),
        }
    }
}

/// How long a job took, as a person reads it: "3.9 s", "8 min 51 s" (not "530.8 s").
fn took(seconds: f32) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        let s = seconds.round() as u64;
        if s < 3600 { format!("{} min {} s", s / 60, s % 60) } else { format!("{} h {} min", s / 3600, s % 3600 / 60) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_jobs_carry_the_switches() {
        let sw = Switches {
            debug_align: Some("/tmp/why".into()),
            memory_gib: Some(3.0),
            patch: serde_json::from_str(r#"{"fine_steps":2}"#).ok(),
            ..Default::default()
        };
        let run = RunSettings { seed: 4, ..Default::default() };
        let s = job_settings(&FillSettings::default(), &run, 9, &sw).unwrap();
        assert!(s.diagnostics.on());
        assert_eq!((s.memory_gib, s.patch.fine_steps, s.seed, s.result_photo), (Some(3.0), 2, 9, true));
    }

    #[test]
    fn a_jobs_time_reads_as_minutes_beyond_one() {
        assert_eq!(took(3.94), "3.9 s");
        assert_eq!(took(530.8), "8 min 51 s");
        assert_eq!(took(3725.0), "1 h 2 min");
    }
}
