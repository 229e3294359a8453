//! The worker thread: it owns the device and the learned model; Jobs go in, Events come out
//! (crossbeam channels). The CLI and the app drive it the same way. Cancellation is a shared
//! flag checked before every learning and sampling step; the worker counts the steps it has
//! reported, so `Event::Cancelled` says how many steps ran after the request (at most one).
//! A panic inside a job is caught and reported as `Event::Failed`; the worker keeps serving.

pub mod budget;
pub mod detail;
pub mod device;
pub mod own_texture;
pub mod pipeline;
pub mod sd_fill;
pub mod settings;
pub mod sources;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, unbounded};

pub use device::BackendChoice;
pub use pipeline::{FillOutput, Timings};
pub use settings::FillSettings;

use crate::error::Error;
use crate::scene::{RgbF, Scene};

pub enum Job {
    /// Learn (or load) the scene model only.
    Learn { scene: Arc<Scene>, settings: FillSettings },
    /// Learn if needed, then fill `candidates` times (seeds `settings.seed`, `+ 1`, …): one
    /// `Event::Done` each, the job over after the last.
    Fill { scene: Arc<Scene>, settings: FillSettings, candidates: usize },
}

pub enum Event {
    /// The device in use (and a warning when it is a fallback).
    Backend {
        description: String,
        warning: Option<String>,
    },
    Status(String),
    /// Something the person should know although the job goes on.
    Warning(String),
    Learning {
        step: usize,
        total: usize,
        loss: f32,
        elapsed_s: f32,
    },
    /// An x0 estimate of the whole working canvas after `step` of `total` steps. Droppable:
    /// a consumer that is behind only needs the newest.
    Preview {
        step: usize,
        total: usize,
        image: Arc<RgbF>,
    },
    /// A finished strip of the native-resolution fill of a photo much larger than the working
    /// size, after the last `Preview` (`detail::NativeTile`: canvas position, pixels before
    /// compositing, rows done). Not droppable: the strips together are the preview.
    NativeTile(detail::NativeTile),
    Learned {
        cached: bool,
    },
    Done(Box<FillOutput>),
    Failed(String),
    /// The GPU server cannot be used: it was not reached at the start (then every job fails
    /// with this message), or the connection was lost during a job (which this event ends, in
    /// place of `Failed`). Nothing else changes; an engine on a local backend can take the
    /// next job.
    ServerLost(String),
    /// The job stopped at a cancel request; nothing was produced. `requested_after`: the steps
    /// (learning and sampling) the job had reported when `Engine::cancel` was called;
    /// `stopped_after`: the steps it had reported when it stopped. The step under way when the
    /// request came may finish, so `stopped_after <= requested_after + 1`.
    Cancelled {
        requested_after: usize,
        stopped_after: usize,
    },
}

pub struct Engine {
    jobs: Option<Sender<Job>>,
    events: Receiver<Event>,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

/// Shared between the engine handle and its worker.
#[derive(Default)]
struct Control {
    cancel: AtomicBool,
    /// Steps the current job has reported (learning steps and previews), counted before each
    /// event is sent.
    steps: AtomicUsize,
    /// `steps` as read just after the cancel flag was raised.
    requested_after: AtomicUsize,
}

/// Called after every event, from the worker thread (the app asks egui for a repaint).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The event channel plus the waker.
struct Events {
    tx: Sender<Event>,
    waker: Option<Waker>,
}

impl Events {
    fn send(&self, ev: Event) {
        let _ = self.tx.send(ev);
        if let Some(w) = &self.waker {
            w();
        }
    }
}

struct Reporter<'a> {
    tx: &'a Events,
    started: Instant,
    steps: &'a AtomicUsize,
}

impl pipeline::Progress for Reporter<'_> {
    fn status(&mut self, msg: String) {
        self.tx.send(Event::Status(msg));
    }
    fn learning(&mut self, step: usize, total: usize, loss: f32) {
        self.steps.fetch_add(1, Ordering::SeqCst);
        self.tx.send(Event::Learning { step, total, loss, elapsed_s: self.started.elapsed().as_secs_f32() });
    }
    fn preview(&mut self, step: usize, total: usize, image: Arc<RgbF>) {
        self.steps.fetch_add(1, Ordering::SeqCst);
        self.tx.send(Event::Preview { step, total, image });
    }
    fn warning(&mut self, msg: String) {
        self.tx.send(Event::Warning(msg));
    }
    fn native_tile(&mut self, tile: detail::NativeTile) {
        // A strip is a step for cancelling: a cancel stops within one.
        self.steps.fetch_add(1, Ordering::SeqCst);
        self.tx.send(Event::NativeTile(tile));
    }
}

impl Engine {
    pub fn start(backend: BackendChoice) -> Engine {
        Engine::start_with_waker(backend, None)
    }

    /// Like `start`, calling `waker` after each event (so a UI can sleep until one arrives).
    pub fn start_with_waker(backend: BackendChoice, waker: Option<Waker>) -> Engine {
        let (job_tx, job_rx) = unbounded::<Job>();
        let (ev_tx, ev_rx) = unbounded::<Event>();
        let control = Arc::new(Control::default());
        let shared = control.clone();
        let thread = std::thread::Builder::new()
            .name("realfill-engine".into())
            .spawn(move || worker(backend, job_rx, Events { tx: ev_tx, waker }, shared))
            .expect("spawn engine thread");
        Engine { jobs: Some(job_tx), events: ev_rx, control, thread: Some(thread) }
    }

    pub fn submit(&self, job: Job) {
        self.control.cancel.store(false, Ordering::SeqCst);
        if let Some(tx) = &self.jobs {
            let _ = tx.send(job);
        }
    }

    /// Ask the running job to stop; it ends with `Event::Cancelled` within one step.
    pub fn cancel(&self) {
        let c = &self.control;
        c.cancel.store(true, Ordering::SeqCst);
        // Read after the flag is up: every step that checked the flag before it went up has
        // either been counted here or is the one step still allowed to finish.
        c.requested_after.store(c.steps.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.control.cancel.store(true, Ordering::SeqCst);
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker(backend: BackendChoice, jobs: Receiver<Job>, tx: Events, control: Arc<Control>) {
    let (device, description, warning) = match device::pick(&backend) {
        Ok(picked) => picked,
        Err(msg) => {
            tx.send(Event::ServerLost(msg.clone()));
            for _ in jobs.iter() {
                tx.send(Event::Failed(msg.clone()));
            }
            return;
        }
    };
    tx.send(Event::Backend { description, warning });
    let server = match &backend {
        BackendChoice::Remote(s) => Some(s.url.clone()),
        _ => None,
    };
    let mut held = pipeline::Held::default();
    for job in jobs.iter() {
        control.steps.store(0, Ordering::SeqCst);
        let cancelled = || control.cancel.load(Ordering::SeqCst);
        let mut rep = Reporter { tx: &tx, started: Instant::now(), steps: &control.steps };
        let run = || match &job {
            Job::Learn { scene, settings } => {
                pipeline::run_learn(scene, settings, &device, &mut held, &mut rep, &cancelled)
                    .map(|cached| Event::Learned { cached })
            }
            Job::Fill { scene, settings, candidates } => {
                // Every candidate goes out as it is done; the last is the job's end.
                let mut last = None;
                let mut emit = |out: FillOutput| {
                    if out.candidate + 1 < out.candidates {
                        tx.send(Event::Done(Box::new(out)));
                    } else {
                        last = Some(out);
                    }
                };
                pipeline::run_fills(scene, settings, *candidates, &device, &mut held, &mut rep, &cancelled, &mut emit)
                    .and_then(|()| last.ok_or_else(|| Error::Engine("no result".into())))
                    .map(|out| Event::Done(Box::new(out)))
            }
        };
        // On a GPU server a lost connection surfaces as a panic inside burn, which the job
        // reports: its print (with a backtrace) would only bury the message. Locally a panic is
        // a bug, and its print is kept.
        let result =
            if server.is_some() { device::catch_quietly(run) } else { std::panic::catch_unwind(AssertUnwindSafe(run)) };
        let event = match result {
            Ok(Ok(ev)) => ev,
            Ok(Err(Error::Cancelled)) => Event::Cancelled {
                requested_after: control.requested_after.load(Ordering::SeqCst),
                stopped_after: control.steps.load(Ordering::SeqCst),
            },
            Ok(Err(e)) => Event::Failed(e.to_string()),
            Err(p) => {
                held = pipeline::Held::default();
                Event::Failed(format!("internal error in the engine: {}", device::panic_message(&p)))
            }
        };
        // A job that failed on a GPU server: if the server no longer answers, say so (the job's
        // own error is often only "failed to read a tensor").
        let lost = match (&event, &server) {
            (Event::Failed(_), Some(url)) => device::probe(&device).err().map(|_| crate::remote::lost_message(url)),
            _ => None,
        };
        match lost {
            Some(msg) => {
                held = pipeline::Held::default();
                if let Some(url) = &server {
                    crate::remote::lost(url);
                }
                tx.send(Event::ServerLost(msg));
            }
            None => tx.send(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::unet::UNetSpec;
    use crate::scene::{Extension, Mask, Photo};

    fn tiny_scene() -> Scene {
        scene_of(48, 32, (10, 8, 30, 20))
    }

    /// A `w`×`h` gradient with a hole over [x0, x1) × [y0, y1).
    fn scene_of(w: u32, h: u32, (x0, y0, x1, y1): (usize, usize, usize, usize)) -> Scene {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5 % 256) as u8, (y * 7 % 256) as u8, 90]));
        let original = image::DynamicImage::ImageRgb8(img);
        let rgb = RgbF { width: w as usize, height: h as usize, data: original.to_rgb32f().into_raw() };
        let target = Photo { path: "t.png".into(), original, rgb, transparent: None, metadata: Default::default() };
        let mut m = Mask::new(w as usize, h as usize, 0.0);
        for y in y0..y1 {
            for x in x0..x1 {
                m.set(x, y, 1.0);
            }
        }
        Scene::new(target, Some((m, std::path::Path::new("m.png"))), Extension::default(), vec![]).unwrap()
    }

    fn tiny_settings() -> FillSettings {
        let mut s = FillSettings {
            engine: crate::settings::EngineKind::SceneModel,
            size: 48,
            steps: 20,
            use_cache: false,
            spec: UNetSpec { channels: vec![8, 16], emb_dim: 16 },
            ..Default::default()
        };
        s.learn.steps = 3;
        s.learn.batch = 2;
        s.learn.crop = 16;
        s
    }

    #[test]
    fn one_fill_job_gives_every_candidate_from_one_preparation() {
        // Three candidates: three results in seed order, each with its index, each with its
        // own previews; the scene is prepared (and the model learned) once.
        let engine = Engine::start(BackendChoice::Cpu);
        let mut s = tiny_settings();
        s.steps = 4;
        s.seed = 7;
        engine.submit(Job::Fill { scene: Arc::new(tiny_scene()), settings: s, candidates: 3 });
        let (mut done, mut previews, mut learning, mut prepared) = (Vec::new(), 0, 0, 0);
        loop {
            match engine.events().recv().unwrap() {
                Event::Preview { .. } => previews += 1,
                Event::Learning { .. } => learning += 1,
                Event::Status(m) if m.starts_with("working size") => prepared += 1,
                Event::Done(out) => {
                    done.push((out.seed, out.candidate, out.candidates));
                    if out.candidate + 1 == out.candidates {
                        break;
                    }
                }
                Event::Failed(e) => panic!("failed: {e}"),
                Event::Cancelled { .. } => panic!("cancelled"),
                _ => {}
            }
        }
        assert_eq!(done, vec![(7, 0, 3), (8, 1, 3), (9, 2, 3)]);
        assert_eq!(previews, 12, "four previews per candidate");
        assert_eq!((learning, prepared), (3, 1), "learned and prepared once");
    }

    #[test]
    fn fill_streams_previews_then_finishes() {
        let engine = Engine::start(BackendChoice::Cpu);
        engine.submit(Job::Fill { scene: Arc::new(tiny_scene()), settings: tiny_settings(), candidates: 1 });
        let mut previews = 0;
        let mut learning = 0;
        loop {
            match engine.events().recv().unwrap() {
                Event::Preview { step, total, image } => {
                    previews += 1;
                    assert_eq!(total, 20);
                    assert_eq!(step, previews);
                    assert_eq!((image.width, image.height), (48, 32));
                }
                Event::Learning { .. } => learning += 1,
                Event::Done(out) => {
                    assert_eq!((out.image.width(), out.image.height()), (48, 32));
                    break;
                }
                Event::Failed(e) => panic!("failed: {e}"),
                Event::Cancelled { .. } => panic!("cancelled"),
                _ => {}
            }
        }
        assert_eq!(previews, 20);
        assert_eq!(learning, 3);
    }

    #[test]
    fn cancel_stops_within_one_step() {
        // Asserted on the worker's own step count, not on how many events arrive after the
        // cancel: on a loaded machine the worker may run ahead of this thread, and previews
        // sent before the request are still in the channel (issue 17).
        let engine = Engine::start(BackendChoice::Cpu);
        engine.submit(Job::Fill { scene: Arc::new(tiny_scene()), settings: tiny_settings(), candidates: 1 });
        let mut reported = 0;
        let mut requested = false;
        let (requested_after, stopped_after) = loop {
            match engine.events().recv().unwrap() {
                Event::Learning { .. } => reported += 1,
                Event::Preview { step, .. } => {
                    reported += 1;
                    if !requested && step == 2 {
                        engine.cancel();
                        requested = true;
                    }
                }
                Event::Cancelled { requested_after, stopped_after } => break (requested_after, stopped_after),
                Event::Done(_) => panic!("finished despite cancel"),
                Event::Failed(e) => panic!("failed: {e}"),
                _ => {}
            }
        };
        // 3 learning steps and 2 previews had been received when the request was made.
        assert!(requested_after >= 5, "the request came after {requested_after} steps");
        assert!(
            stopped_after <= requested_after + 1,
            "{} steps ran after the cancel request",
            stopped_after - requested_after
        );
        assert_eq!(reported, stopped_after, "every step the worker counted was reported");
        // the worker serves the next job
        engine.submit(Job::Learn { scene: Arc::new(tiny_scene()), settings: tiny_settings() });
        loop {
            match engine.events().recv().unwrap() {
                Event::Learned { cached } => {
                    // The cancel came during sampling: the model learned before it is kept.
                    assert!(cached);
                    break;
                }
                Event::Failed(e) => panic!("failed: {e}"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_photo_larger_than_the_working_size_streams_native_strips_after_the_previews() {
        // 256×192 filled at 48 px: the native step covers ≈ 170 rows, in strips of 64.
        let settings = FillSettings {
            engine: crate::settings::EngineKind::Patch,
            size: 48,
            use_cache: false,
            ..Default::default()
        };
        let scene = Arc::new(scene_of(256, 192, (60, 40, 200, 150)));
        let engine = Engine::start(BackendChoice::Cpu);
        engine.submit(Job::Fill { scene, settings, candidates: 1 });
        let (mut previews, mut strips) = (0, Vec::new());
        loop {
            match engine.events().recv().unwrap() {
                Event::Preview { .. } => {
                    assert!(strips.is_empty(), "every preview comes before the native strips");
                    previews += 1;
                }
                Event::NativeTile(t) => strips.push(t.rows_done),
                Event::Done(_) => break,
                Event::Failed(e) => panic!("failed: {e}"),
                Event::Cancelled { .. } => panic!("cancelled"),
                _ => {}
            }
        }
        assert!(previews > 0);
        assert!(strips.len() >= 3 && strips.windows(2).all(|w| w[0] < w[1]), "rows done per strip: {strips:?}");
        // Cancelling between strips is `detail`'s test (a cancel raised at the first strip stops
        // the next); here, that a strip counts as a step for `Engine::cancel`'s accounting. (A
        // cancel sent from this thread on the first strip's event races the worker, which may
        // have finished the few strips by then: issue 17's lesson.)
        let (tx, rx) = unbounded();
        let events = Events { tx, waker: None };
        let steps = AtomicUsize::new(0);
        let mut rep = Reporter { tx: &events, started: Instant::now(), steps: &steps };
        let tile = detail::NativeTile { x0: 0, y0: 0, rgb: Arc::new(RgbF::new(4, 2)), rows_done: 2, rows: 4 };
        pipeline::Progress::native_tile(&mut rep, tile);
        assert_eq!(steps.load(Ordering::SeqCst), 1);
        assert!(matches!(rx.try_recv(), Ok(Event::NativeTile(t)) if t.rows_done == 2));
    }
    fn sd_settings(steps: usize) -> FillSettings {
        let mut s = FillSettings {
            engine: crate::settings::EngineKind::StableDiffusion,
            size: 48,
            use_cache: false,
            ..Default::default()
        };
        s.sd.model = Some(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny"));
        s.sd.steps = steps;
        s
    }

    /// Stable Diffusion (the committed tiny model) through the same Job/Event path: a preview
    /// per step with the photo's known pixels in place, a result of the canvas's size, the
    /// model loaded once and kept for the next fill, and a cancel that stops within one step.
    #[test]
    fn stable_diffusion_fills_previews_keeps_its_model_and_cancels() {
        let engine = Engine::start(BackendChoice::Cpu);
        let scene = Arc::new(tiny_scene());
        let known = scene.target.rgb.get(2, 2);
        for round in 0..2 {
            engine.submit(Job::Fill { scene: scene.clone(), settings: sd_settings(6), candidates: 1 });
            let mut previews = 0;
            loop {
                match engine.events().recv().unwrap() {
                    Event::Preview { step, total, image } => {
                        previews += 1;
                        assert_eq!((step, total), (previews, 6));
                        assert_eq!((image.width, image.height), (48, 32));
                        let p = image.get(2, 2);
                        assert!((0..3).all(|k| (p[k] - known[k]).abs() < 0.02), "known pixel {p:?} vs {known:?}");
                    }
                    Event::Done(out) => {
                        assert_eq!((out.image.width(), out.image.height()), (48, 32));
                        assert_eq!(out.timings.model_cached, round == 1, "loaded once, then kept");
                        break;
                    }
                    Event::Failed(e) => panic!("failed: {e}"),
                    Event::Cancelled { .. } => panic!("cancelled"),
                    _ => {}
                }
            }
            assert_eq!(previews, 6);
        }
        engine.submit(Job::Fill { scene, settings: sd_settings(40), candidates: 1 });
        let mut requested = false;
        let (requested_after, stopped_after) = loop {
            match engine.events().recv().unwrap() {
                Event::Preview { step, .. } if !requested && step == 2 => {
                    engine.cancel();
                    requested = true;
                }
                Event::Cancelled { requested_after, stopped_after } => break (requested_after, stopped_after),
                Event::Done(_) => panic!("finished despite cancel"),
                Event::Failed(e) => panic!("failed: {e}"),
                _ => {}
            }
        };
        assert!(stopped_after <= requested_after + 1 && stopped_after < 40, "{requested_after} → {stopped_after}");
    }
    /// Half precision on the CPU: the same fill within a level of 255 on the tiny model, and a
    /// change of precision reads the model again (a held f32 model is not reused for f16).
    #[test]
    fn stable_diffusion_fills_in_half_precision_like_in_single() {
        let engine = Engine::start(BackendChoice::Cpu);
        let scene = Arc::new(tiny_scene());
        let mut images = Vec::new();
        for precision in [crate::settings::SdPrecision::F32, crate::settings::SdPrecision::F16] {
            let mut s = sd_settings(4);
            s.sd.precision = precision;
            engine.submit(Job::Fill { scene: scene.clone(), settings: s, candidates: 1 });
            loop {
                match engine.events().recv().unwrap() {
                    Event::Done(out) => {
                        assert!(!out.timings.model_cached, "{precision:?}: read for its precision");
                        images.push(out.image.to_rgb8().into_raw());
                        break;
                    }
                    Event::Failed(e) => panic!("failed: {e}"),
                    _ => {}
                }
            }
        }
        let worst = images[0].iter().zip(&images[1]).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        assert!(worst <= 2, "f16 against f32: {worst} levels");
    }

    /// Learning a scene into Stable Diffusion streams one loss per step and stops within one
    /// step of a cancel, like the scene model's learning.
    #[test]
    fn stable_diffusion_learning_streams_losses_and_cancels() {
        let engine = Engine::start(BackendChoice::Cpu);
        let mut s = sd_settings(2);
        s.sd.lora_steps = Some(500);
        s.sd.lora_batch = Some(1);
        engine.submit(Job::Learn { scene: Arc::new(tiny_scene()), settings: s });
        let mut losses = 0;
        let (requested_after, stopped_after) = loop {
            match engine.events().recv().unwrap() {
                Event::Learning { step, total, loss, .. } => {
                    losses += 1;
                    assert_eq!((step, total), (losses, 500));
                    assert!(loss.is_finite());
                    if step == 3 {
                        engine.cancel();
                    }
                }
                Event::Cancelled { requested_after, stopped_after } => break (requested_after, stopped_after),
                Event::Learned { .. } => panic!("finished despite cancel"),
                Event::Failed(e) => panic!("failed: {e}"),
                _ => {}
            }
        };
        assert!(stopped_after <= requested_after + 1 && stopped_after < 500, "{requested_after} → {stopped_after}");
    }
}
