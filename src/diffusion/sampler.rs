//! The denoising loop, outside the model: DDIM (η = 0, deterministic) or DDPM (η = 1)
//! over a subset of the training timesteps. After every step the x0 estimate has the known
//! pixels pasted back (the inpainting condition), is handed to `on_step` for previews, and
//! the cancel check runs. Images are planar CHW in [-1, 1].

use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Everything the model is conditioned on, at working size.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub width: usize,
    pub height: usize,
    /// Known pixels (CHW, [-1, 1]); values under the mask are 0.
    pub known: Vec<f32>,
    /// 1 = fill, 0 = keep (HW).
    pub mask: Vec<f32>,
    /// The prior estimate (CHW, [-1, 1]): known pixels, warped references, smooth continuation.
    pub prior: Vec<f32>,
    /// 1 where the guide (the references warped into the target's frame) covers the pixel (HW).
    pub guide_valid: Vec<f32>,
}

impl Condition {
    pub fn pixels(&self) -> usize {
        self.width * self.height
    }
}

/// A model that predicts the clean image x0 (CHW, [-1, 1]) from a noisy image at timestep `t`.
pub trait Denoiser {
    fn predict_x0(&mut self, x_t: &[f32], t: usize, cond: &Condition) -> Result<Vec<f32>>;
}

use super::solver::{sigma_of, stepper};
pub use crate::settings::SamplerKind;

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub kind: SamplerKind,
    pub steps: usize,
    pub seed: u64,
}

pub struct SampleOutput {
    /// Final image (known pixels pasted in), CHW in [-1, 1].
    pub x0: Vec<f32>,
    /// The model's own last estimate, before pasting (used to measure colour drift).
    pub raw: Vec<f32>,
}

pub fn sample(
    model: &mut dyn Denoiser,
    schedule: &Schedule,
    cond: &Condition,
    opts: &SampleOptions,
    on_step: &mut dyn FnMut(usize, usize, &[f32]),
    cancelled: &dyn Fn() -> bool,
) -> Result<SampleOutput> {
    let mut rng = Rng::new(opts.seed);
    let x = rng.normals(3 * cond.pixels());
    let ts = schedule.sampling_timesteps(opts.steps);
    run_steps(model, schedule, cond, opts, x, &ts, rng, on_step, cancelled)
}

/// Sample starting from `init` (CHW, [-1, 1]) noised to timestep `start` (SDEdit): the
/// layout of `init` survives, detail is redrawn. `opts.steps` steps from `start` to 0.
#[allow(clippy::too_many_arguments)]
pub fn sample_from(
    model: &mut dyn Denoiser,
    schedule: &Schedule,
    cond: &Condition,
    opts: &SampleOptions,
    init: &[f32],
    start: usize,
    on_step: &mut dyn FnMut(usize, usize, &[f32]),
    cancelled: &dyn Fn() -> bool,
) -> Result<SampleOutput> {
    let mut rng = Rng::new(opts.seed);
    let ts = schedule.timesteps_from(start, opts.steps);
    let (a, b) = schedule.coeffs(ts[0]);
    let x: Vec<f32> = init.iter().map(|&v| a * v + b * rng.normal()).collect();
    run_steps(model, schedule, cond, opts, x, &ts, rng, on_step, cancelled)
}

#[allow(clippy::too_many_arguments)]
fn run_steps(
    model: &mut dyn Denoiser,
    schedule: &Schedule,
    cond: &Condition,
    opts: &SampleOptions,
    mut x: Vec<f32>,
    ts: &[usize],
    mut rng: Rng,
    on_step: &mut dyn FnMut(usize, usize, &[f32]),
    cancelled: &dyn Fn() -> bool,
) -> Result<SampleOutput> {
    let hw = cond.pixels();
    // Every sampler on this schedule's own timesteps (DPM-Solver's Karras levels are Stable
    // Diffusion's).
    let mut step = stepper(opts.kind);
    let mut eps = vec![0.0f32; 3 * hw];
    let mut x0 = vec![0.0f32; 3 * hw];
    let mut raw = vec![0.0f32; 3 * hw];
    for (i, &t) in ts.iter().enumerate() {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let pred = model.predict_x0(&x, t, cond)?;
        let (a, b) = schedule.coeffs(t);
        for j in 0..3 * hw {
            let est = pred[j].clamp(-1.0, 1.0);
            raw[j] = est;
            let m = cond.mask[j % hw];
            x0[j] = m * est + (1.0 - m) * cond.known[j];
        }
        on_step(i + 1, ts.len(), &x0);
        let Some(&t_prev) = ts.get(i + 1) else { break };
        // ε consistent with x_t and the pasted x0 estimate.
        for j in 0..3 * hw {
            eps[j] = (x[j] - a * x0[j]) / b.max(1e-6);
        }
        let (s, s_prev) = (sigma_of(schedule.alpha_bar[t]), sigma_of(schedule.alpha_bar[t_prev]));
        x = step.step(&x, &x0, &eps, s, s_prev, &mut rng);
    }
    Ok(SampleOutput { x0, raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ideal denoiser for a data distribution that is a single image `target`.
    struct Oracle {
        target: Vec<f32>,
        schedule: Schedule,
        calls: usize,
    }

    impl Denoiser for Oracle {
        fn predict_x0(&mut self, x_t: &[f32], t: usize, _c: &Condition) -> Result<Vec<f32>> {
            self.calls += 1;
            assert!(t < self.schedule.len());
            assert_eq!(x_t.len(), self.target.len());
            Ok(self.target.clone())
        }
    }

    fn cond(w: usize, h: usize) -> Condition {
        let hw = w * h;
        let mut mask = vec![0.0; hw];
        for i in 0..hw / 2 {
            mask[i] = 1.0;
        }
        let known: Vec<f32> = (0..3 * hw).map(|j| if mask[j % hw] > 0.5 { 0.0 } else { 0.25 }).collect();
        Condition { width: w, height: h, known, mask, prior: vec![0.0; 3 * hw], guide_valid: vec![0.0; hw] }
    }

    #[test]
    fn oracle_denoiser_recovers_target_and_keeps_known_pixels() {
        let (w, h) = (8, 6);
        let c = cond(w, h);
        let target: Vec<f32> = (0..3 * w * h).map(|j| ((j * 7) % 11) as f32 / 11.0 - 0.5).collect();
        for kind in [SamplerKind::Ddim, SamplerKind::Ddpm, SamplerKind::DpmSolver, SamplerKind::EulerAncestral] {
            let mut oracle = Oracle { target: target.clone(), schedule: Schedule::default(), calls: 0 };
            let mut previews = 0;
            let out = sample(
                &mut oracle,
                &Schedule::default(),
                &c,
                &SampleOptions { kind, steps: 20, seed: 3 },
                &mut |_, _, _| previews += 1,
                &|| false,
            )
            .unwrap();
            assert_eq!(oracle.calls, 20);
            assert_eq!(previews, 20);
            for j in 0..3 * w * h {
                if c.mask[j % (w * h)] > 0.5 {
                    assert!((out.x0[j] - target[j]).abs() < 1e-3, "{kind:?} fill pixel {j}");
                } else {
                    assert_eq!(out.x0[j], 0.25, "known pixel {j} kept");
                }
            }
        }
    }

    #[test]
    fn same_seed_same_result_and_cancel_stops_at_once() {
        let c = cond(4, 4);
        let target = vec![0.1; 48];
        let run = |seed| {
            let mut o = Oracle { target: target.clone(), schedule: Schedule::default(), calls: 0 };
            sample(
                &mut o,
                &Schedule::default(),
                &c,
                &SampleOptions { kind: SamplerKind::Ddpm, steps: 5, seed },
                &mut |_, _, _| {},
                &|| false,
            )
            .unwrap()
            .x0
        };
        assert_eq!(run(9), run(9));
        let mut o = Oracle { target, schedule: Schedule::default(), calls: 0 };
        let flag = std::cell::Cell::new(false);
        let mut steps_seen = 0;
        let r = sample(
            &mut o,
            &Schedule::default(),
            &c,
            &SampleOptions { kind: SamplerKind::Ddim, steps: 10, seed: 1 },
            &mut |s, _, _| {
                steps_seen = s;
                if s == 3 {
                    flag.set(true);
                }
            },
            &|| flag.get(),
        );
        assert!(matches!(r, Err(Error::Cancelled)));
        assert_eq!(steps_seen, 3);
        assert_eq!(o.calls, 3, "no model call after cancel");
    }
}
