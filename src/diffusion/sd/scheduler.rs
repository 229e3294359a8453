//! The noise schedule of `scheduler/scheduler_config.json` and the two samplers realfill runs
//! on it, as diffusers computes them: DDIM (η = 0) and DDPM (ancestral, "fixed_small"
//! variance), on epsilon- or v-predicting models. The config's class names the sampler its
//! authors used (PNDM for SD-2 inpainting); every scheduler of the same discrete beta family
//! shares the schedule, so realfill samples it with DDIM or DDPM; other families are refused.

use std::path::Path;

use serde::Deserialize;

use super::config::{bounds, read_json, within};
use crate::diffusion::solver;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::settings::SamplerKind;

fn d_t() -> usize {
    1000
}
fn d_bs() -> f64 {
    0.0001
}
fn d_be() -> f64 {
    0.02
}
fn d_linear() -> String {
    "linear".into()
}
fn d_eps() -> String {
    "epsilon".into()
}
fn d_one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(default = "d_t")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_bs")]
    pub beta_start: f64,
    #[serde(default = "d_be")]
    pub beta_end: f64,
    #[serde(default = "d_linear")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "d_eps")]
    pub prediction_type: String,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    /// None: the sampler's own default, as diffusers reads a config without the key (DDIM and
    /// DDPM "leading", DPM-Solver "linspace").
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default = "d_one")]
    pub clip_sample_range: f64,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

/// Schedulers on diffusers' discrete beta schedule (the same ᾱ table; they differ in the
/// solver only).
const SAME_FAMILY: [&str; 11] = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

#[derive(Debug)]
pub struct Scheduler {
    pub config: SchedulerConfig,
    /// ᾱ_t for t = 0 … T−1.
    pub alphas_cumprod: Vec<f64>,
    pub prediction: Prediction,
}

impl Scheduler {
    pub fn load(path: &Path) -> Result<Scheduler> {
        let c: SchedulerConfig = read_json(path)?;
        Scheduler::new(c).map_err(|why| Error::input(path, why))
    }

    pub fn new(c: SchedulerConfig) -> std::result::Result<Scheduler, String> {
        if !SAME_FAMILY.contains(&c.class_name.as_str()) {
            return Err(format!(
                "scheduler {:?} is not supported: realfill samples the discrete-beta family ({}) with DDIM or DDPM",
                c.class_name,
                SAME_FAMILY.join(", ")
            ));
        }
        let prediction = match c.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            p => return Err(format!("prediction_type {p:?} is not supported (epsilon or v_prediction)")),
        };
        if c.thresholding || c.rescale_betas_zero_snr {
            return Err("thresholding and rescale_betas_zero_snr are not supported".into());
        }
        if !matches!(c.timestep_spacing.as_deref(), None | Some("leading" | "trailing" | "linspace")) {
            return Err(format!("timestep_spacing {:?} is not supported", c.timestep_spacing));
        }
        // The numbers before anything is sized by them.
        let t = c.num_train_timesteps;
        within("num_train_timesteps", t, bounds::TIMESTEPS)?;
        within("steps_offset", c.steps_offset, 0..=t - 1)?;
        if !(c.clip_sample_range.is_finite() && c.clip_sample_range > 0.0) {
            return Err(format!("`clip_sample_range` is {}; it must be a finite number above 0", c.clip_sample_range));
        }
        let betas: Vec<f64> = if let Some(b) = &c.trained_betas {
            if b.len() != t {
                return Err("trained_betas must list num_train_timesteps values".into());
            }
            b.clone()
        } else {
            let lin = |a: f64, b: f64| (0..t).map(move |i| a + (b - a) * i as f64 / (t - 1) as f64);
            match c.beta_schedule.as_str() {
                "linear" => lin(c.beta_start, c.beta_end).collect(),
                "scaled_linear" => lin(c.beta_start.sqrt(), c.beta_end.sqrt()).map(|b| b * b).collect(),
                "squaredcos_cap_v2" => {
                    let ab = |x: f64| ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                    (0..t).map(|i| (1.0 - ab((i + 1) as f64 / t as f64) / ab(i as f64 / t as f64)).min(0.999)).collect()
                }
                s => return Err(format!("beta_schedule {s:?} is not supported")),
            }
        };
        // A beta is the noise a step adds: outside [0, 1) the schedule is no schedule (above
        // 1 every ᾱ after it is negative and the fill comes out black).
        if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(0.0..1.0).contains(*b)) {
            let field = if c.trained_betas.is_some() {
                format!("`trained_betas`[{i}] is {b}")
            } else {
                format!("`beta_start` {} and `beta_end` {} give a beta of {b} at step {i}", c.beta_start, c.beta_end)
            };
            return Err(format!("{field}; betas must lie in [0, 1): the config is damaged"));
        }
        // Products in f32 steps like diffusers (torch.cumprod over float32 betas).
        let mut acc = 1.0f32;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - *b as f32;
                acc as f64
            })
            .collect();
        Ok(Scheduler { config: c, alphas_cumprod, prediction })
    }

    /// The `n` timesteps of a sampling run, largest first (diffusers' `set_timesteps`).
    pub fn timesteps(&self, n: usize) -> Vec<usize> {
        let t = self.config.num_train_timesteps;
        let n = n.clamp(1, t);
        match self.config.timestep_spacing.as_deref().unwrap_or("leading") {
            "trailing" => {
                // numpy's round: halves to even.
                let ratio = t as f64 / n as f64;
                (0..n).map(|i| ((t as f64 - i as f64 * ratio).round_ties_even() as usize).saturating_sub(1)).collect()
            }
            "linspace" => {
                (0..n).rev().map(|i| ((t - 1) as f64 * i as f64 / (n - 1).max(1) as f64).round() as usize).collect()
            }
            _ => {
                let ratio = t / n;
                (0..n).rev().map(|i| (i * ratio + self.config.steps_offset).min(t - 1)).collect()
            }
        }
    }

    /// DPM-Solver's run of `n` steps (diffusers' `DPMSolverMultistepScheduler.set_timesteps`):
    /// the timestep the network is given at each step, the noise level σ of each, and a last
    /// σ of 0. With `karras`, Karras et al.'s levels between the schedule's smallest and
    /// largest, each given the timestep whose σ it is (interpolated in log σ, rounded).
    pub fn dpm_plan(&self, n: usize, karras: bool) -> (Vec<usize>, Vec<f64>) {
        let t = self.config.num_train_timesteps;
        let n = n.clamp(1, t);
        let table: Vec<f64> = self.alphas_cumprod.iter().map(|&a| solver::sigma_of(a)).collect();
        let steps: Vec<usize> = match self.config.timestep_spacing.as_deref().unwrap_or("linspace") {
            "leading" => {
                let ratio = t / (n + 1);
                (0..=n).rev().take(n).map(|i| (i * ratio + self.config.steps_offset).min(t - 1)).collect()
            }
            "trailing" => self.timesteps(n),
            _ => (0..=n)
                .rev()
                .take(n)
                .map(|i| ((t - 1) as f64 * i as f64 / n as f64).round_ties_even() as usize)
                .collect(),
        };
        let (steps, mut sigmas) = if karras {
            let sigmas = solver::karras_sigmas(n, table[0], table[t - 1]);
            let log: Vec<f64> = table.iter().map(|s| s.ln()).collect();
            let steps = sigmas.iter().map(|&s| timestep_of_log_sigma(&log, s.ln())).collect();
            (steps, sigmas)
        } else {
            let sigmas = steps.iter().map(|&i| table[i]).collect();
            (steps, sigmas)
        };
        sigmas.push(0.0);
        (steps, sigmas)
    }

    /// Euler-ancestral's run of `n` steps (diffusers' `EulerAncestralDiscreteScheduler.
    /// set_timesteps`, its own default spacing `linspace`): the timestep the network is given
    /// at each step (fractional with `linspace`), the noise level σ of each — the schedule's
    /// σ table interpolated linearly at that timestep — with a last σ of 0, and the initial
    /// noise's σ (`init_noise_sigma`: the largest σ, or √(σ² + 1) of it with `leading`).
    pub fn euler_plan(&self, n: usize) -> (Vec<f32>, Vec<f64>, f64) {
        let t = self.config.num_train_timesteps;
        let n = n.clamp(1, t);
        let spacing = self.config.timestep_spacing.as_deref().unwrap_or("linspace");
        // Leading and trailing as DDIM's (`timesteps`); linspace unrounded, as np.linspace.
        let steps: Vec<f64> = if spacing == "linspace" {
            (0..n).rev().map(|i| (t - 1) as f64 * i as f64 / (n - 1).max(1) as f64).collect()
        } else {
            self.timesteps(n).iter().map(|&s| s as f64).collect()
        };
        let table: Vec<f64> = self.alphas_cumprod.iter().map(|&a| solver::sigma_of(a)).collect();
        let at = |s: f64| {
            let s = s.clamp(0.0, (t - 1) as f64);
            let (i, f) = (s.floor() as usize, s - s.floor());
            if i + 1 < t { table[i] * (1.0 - f) + table[i + 1] * f } else { table[i] }
        };
        let mut sigmas: Vec<f64> = steps.iter().map(|&s| at(s)).collect();
        let top = sigmas.iter().copied().fold(0.0, f64::max);
        let init = if spacing == "linspace" || spacing == "trailing" { top } else { (top * top + 1.0).sqrt() };
        sigmas.push(0.0);
        (steps.iter().map(|&s| s as f32).collect(), sigmas, init)
    }

    /// The clean-sample estimate of the model's output `out` at `x`, at noise level `sigma`
    /// (DPM-Solver's conversion; with Karras levels σ is not one of the table's).
    pub fn estimate_at_sigma(&self, x: &[f32], out: &[f32], sigma: f64) -> Vec<f32> {
        let (alpha, vp) = solver::alpha_sigma(sigma);
        let (a, s) = (alpha as f32, vp as f32);
        match self.prediction {
            Prediction::Epsilon => x.iter().zip(out).map(|(x, e)| (x - s * e) / a).collect(),
            Prediction::V => x.iter().zip(out).map(|(x, v)| a * x - s * v).collect(),
        }
    }

    /// ᾱ of the step after `t` in a run of `n` steps (diffusers: t − T/n; "final" ᾱ below 0).
    fn alpha_prev(&self, t: usize, n: usize, sampler: SamplerKind) -> f64 {
        let step = self.config.num_train_timesteps / n.max(1);
        if t >= step {
            self.alphas_cumprod[t - step]
        } else if sampler == SamplerKind::Ddpm || self.config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            self.alphas_cumprod[0]
        }
    }

    /// The clean-sample and noise estimates of the model's output `out` at `x_t`.
    pub fn estimates(&self, x: &[f32], out: &[f32], t: usize) -> (Vec<f32>, Vec<f32>) {
        let a = self.alphas_cumprod[t];
        let (sa, sb) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
        let (mut x0, eps): (Vec<f32>, Vec<f32>) = match self.prediction {
            Prediction::Epsilon => (x.iter().zip(out).map(|(x, e)| (x - sb * e) / sa).collect(), out.to_vec()),
            Prediction::V => (
                x.iter().zip(out).map(|(x, v)| sa * x - sb * v).collect(),
                x.iter().zip(out).map(|(x, v)| sa * v + sb * x).collect(),
            ),
        };
        // Clipping (the default of DDIM and DDPM; SD folders switch it off) limits the clean
        // estimate only: diffusers keeps the unclipped noise estimate.
        if self.config.clip_sample.unwrap_or(true) {
            let r = self.config.clip_sample_range as f32;
            x0.iter_mut().for_each(|v| *v = v.clamp(-r, r));
        }
        (x0, eps)
    }

    /// One step from `x` (the latent at timestep `t` of an `n`-step run) given the model's
    /// output: the latent at the next timestep, and the clean-sample estimate (for previews).
    pub fn step(
        &self,
        sampler: SamplerKind,
        x: &[f32],
        out: &[f32],
        t: usize,
        n: usize,
        rng: &mut Rng,
    ) -> (Vec<f32>, Vec<f32>) {
        let (x0, eps) = self.estimates(x, out, t);
        let (a, ap) = (self.alphas_cumprod[t], self.alpha_prev(t, n, sampler));
        // DPM-Solver and Euler-ancestral run through their plans (`dpm_plan`, `euler_plan`);
        // asked for one step here, DPM-Solver's first-order step is DDIM's, and so is Euler's
        // without its fresh noise.
        let kind = if sampler == SamplerKind::Ddpm { SamplerKind::Ddpm } else { SamplerKind::Ddim };
        let next = solver::stepper(kind).step(x, &x0, &eps, solver::sigma_of(a), solver::sigma_of(ap), rng);
        (next, x0)
    }

    /// `x0` noised to timestep `t` with `noise` (for learning and for starting a run part-way).
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        let a = self.alphas_cumprod[t];
        let (sa, sb) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
        x0.iter().zip(noise).map(|(x, n)| sa * x + sb * n).collect()
    }
}

/// The (rounded) timestep whose log σ is `log_sigma`, interpolated in the table `log`
/// (ascending with t), as diffusers' `_sigma_to_t` (and numpy's rounding, half to even).
fn timestep_of_log_sigma(log: &[f64], log_sigma: f64) -> usize {
    let last = log.len() - 1;
    let hi = log.iter().position(|&l| l >= log_sigma).unwrap_or(last).clamp(1, last);
    let lo = hi - 1;
    let w = ((log[lo] - log_sigma) / (log[lo] - log[hi])).clamp(0.0, 1.0);
    ((1.0 - w) * lo as f64 + w * hi as f64).round_ties_even() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd2() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"_class_name":"DDIMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,
                "clip_sample":false,"num_train_timesteps":1000,"set_alpha_to_one":false,"skip_prk_steps":true,
                "steps_offset":1,"trained_betas":null}"#,
        )
        .unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(a, b)| (a - b).abs() < 2e-5)
    }

    /// Reference values printed by diffusers 0.35.2 (DDIMScheduler/DDPMScheduler with these
    /// configs; bench/diffusers_reference.py's venv).
    #[test]
    fn schedule_timesteps_and_steps_match_diffusers() {
        let s = Scheduler::new(sd2()).unwrap();
        assert!((s.alphas_cumprod[0] - 0.9991499781608582).abs() < 1e-7);
        assert!((s.alphas_cumprod[999] - 0.00466009508818388).abs() < 1e-7, "{}", s.alphas_cumprod[999]);
        assert_eq!(&s.timesteps(50)[..3], &[981, 961, 941]);
        assert_eq!(*s.timesteps(50).last().unwrap(), 1);
        assert_eq!(s.timesteps(7), [853, 711, 569, 427, 285, 143, 1]);
        let (x, e) = ([0.3f32, -0.7, 1.2], [0.5f32, 1.0, -0.2]);
        let mut rng = Rng::new(0);
        let (next, _) = s.step(SamplerKind::Ddim, &x, &e, 951, 20, &mut rng);
        assert!(close(&next, &[0.237_069_2, -1.229_476, 1.634_996]), "{next:?}");
        let (next, _) = s.step(SamplerKind::Ddpm, &x, &e, 1, 20, &mut rng);
        assert!(close(&next, &[0.279_598_7, -0.741_911_6, 1.209_287]), "{next:?}");
        let mut v = sd2();
        v.prediction_type = "v_prediction".into();
        let s = Scheduler::new(v).unwrap();
        let (next, _) = s.step(SamplerKind::Ddim, &x, &e, 951, 20, &mut rng);
        assert!(close(&next, &[0.285_786_7, -0.727_910_2, 1.205_161]), "{next:?}");
        let (next, _) = s.step(SamplerKind::Ddim, &x, &e, 1, 20, &mut rng);
        assert!(close(&next, &[0.293_912_2, -0.712_08, 1.202_338]), "{next:?}");
        let mut cos = sd2();
        cos.beta_schedule = "squaredcos_cap_v2".into();
        cos.timestep_spacing = Some("trailing".into());
        cos.steps_offset = 0;
        let s = Scheduler::new(cos).unwrap();
        assert_eq!(s.timesteps(7), [999, 856, 713, 570, 428, 285, 142]);
        // Halves round to even, as numpy's np.round: 937.5 → 938, 812.5 → 812 (diffusers: np.round).
        assert_eq!(&s.timesteps(16)[..6], &[999, 937, 874, 811, 749, 687]);
        assert!((s.alphas_cumprod[500] - 0.4922850430011749).abs() < 1e-6);
    }

    /// diffusers 0.42.1's DPMSolverMultistepScheduler.from_config(this config) — its own
    /// default spacing (linspace), the folder's "leading" with v-prediction, and Karras
    /// levels — four steps from x with fixed model outputs
    /// (bench/dpm_solver_reference.py).
    #[test]
    #[allow(clippy::excessive_precision)] // diffusers' values as printed
    fn dpm_solver_matches_diffusers() {
        let outs = [[0.5f32, 1.0, -0.2], [0.1, -0.4, 0.3], [-0.2, 0.6, 0.05], [0.4, 0.2, -0.3]];
        let run = |c: SchedulerConfig, karras: bool, want_ts: [usize; 4], want: [[f32; 3]; 4]| {
            let s = Scheduler::new(c).unwrap();
            let (ts, sigmas) = s.dpm_plan(4, karras);
            assert_eq!(ts, want_ts);
            let mut solver = solver::DpmSolver2M::default();
            let mut x = vec![0.3f32, -0.7, 1.2];
            for i in 0..4 {
                let x0 = s.estimate_at_sigma(&x, &outs[i], sigmas[i]);
                x = solver.advance(&x, &x0, sigmas[i], sigmas[i + 1]);
                for (a, b) in x.iter().zip(&want[i]) {
                    assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "step {i}: {x:?} vs {:?}", want[i]);
                }
            }
            s
        };
        let s = run(
            sd2(),
            false,
            [999, 749, 500, 250],
            [
                [-0.2074536, -4.9464293, 4.6842198],
                [-0.3999298, -9.7517357, 9.7246571],
                [-0.2931504, -15.7602901, 15.1383762],
                [-0.6354507, -19.3391571, 18.6510906],
            ],
        );
        let ts20 = s.dpm_plan(20, false).0;
        assert_eq!(&ts20[..4], &[999, 949, 899, 849]);
        assert_eq!(&ts20[9..11], &[549, 500]);
        assert_eq!(*ts20.last().unwrap(), 50);
        let mut v = sd2();
        v.prediction_type = "v_prediction".into();
        v.timestep_spacing = Some("leading".into());
        let s = run(
            v,
            false,
            [801, 601, 401, 201],
            [
                [0.1842571, -0.900461, 1.214795],
                [0.2023865, -0.5944875, 1.0453146],
                [0.3277803, -0.9584864, 1.0683119],
                [0.0851304, -0.9308292, 1.0758619],
            ],
        );
        assert_eq!(&s.dpm_plan(20, false).0[..3], &[941, 894, 847]);
        let s = run(
            sd2(),
            true,
            [999, 687, 146, 0],
            [
                [-0.3997912, -6.5309668, 5.9794769],
                [-0.824517, -16.5891685, 16.5973511],
                [-0.2779219, -17.1152573, 17.6561165],
                [-0.2897072, -17.1283703, 17.6723766],
            ],
        );
        assert_eq!(
            s.dpm_plan(20, true).0,
            [999, 962, 921, 876, 827, 772, 710, 640, 561, 474, 380, 285, 197, 123, 69, 35, 15, 6, 2, 0]
        );
    }

    /// diffusers 0.42.1's EulerAncestralDiscreteScheduler.from_config(this config) — its own
    /// default spacing (linspace), "leading" with v-prediction, and "trailing" — four steps
    /// with fixed model outputs and fixed step noise (bench/euler_ancestral_reference.py).
    /// diffusers keeps the latent variance-exploding (x / α); realfill keeps it variance-
    /// preserving, so each step's latent is compared divided by α(σ).
    #[test]
    #[allow(clippy::excessive_precision)] // diffusers' values as printed
    fn euler_ancestral_matches_diffusers() {
        let outs = [[0.5f32, 1.0, -0.2], [0.1, -0.4, 0.3], [-0.2, 0.6, 0.05], [0.4, 0.2, -0.3]];
        let noises = [[0.2f32, -0.1, 0.4], [-0.3, 0.5, 0.1], [0.6, 0.0, -0.2], [0.1, 0.1, 0.1]];
        let run =
            |c: SchedulerConfig, want_ts: [f32; 4], want_sigmas: [f64; 4], want_init: f64, want: [[f32; 3]; 4]| {
                let s = Scheduler::new(c).unwrap();
                let (ts, sigmas, init) = s.euler_plan(4);
                assert_eq!(ts, want_ts);
                for (a, b) in sigmas.iter().zip(&want_sigmas) {
                    assert!((a - b).abs() < 1e-5 * b.max(1.0), "σ {sigmas:?} vs {want_sigmas:?}");
                }
                assert_eq!(sigmas.len(), 5);
                assert_eq!(sigmas[4], 0.0);
                assert!((init - want_init).abs() < 1e-5 * want_init, "init {init} vs {want_init}");
                let a0 = solver::alpha_sigma(sigmas[0]).0 as f32;
                let mut x: Vec<f32> = [0.3f32, -0.7, 1.2].iter().map(|v| v * init as f32 * a0).collect();
                for i in 0..4 {
                    let x0 = s.estimate_at_sigma(&x, &outs[i], sigmas[i]);
                    x = solver::euler_ancestral_step(&x, &x0, sigmas[i], sigmas[i + 1], &noises[i]);
                    let a = solver::alpha_sigma(sigmas[i + 1]).0 as f32;
                    for (v, b) in x.iter().zip(&want[i]) {
                        let ve = v / a;
                        assert!((ve - b).abs() < 1e-4 * b.abs().max(1.0), "step {i}: {ve} vs {:?}", want[i]);
                    }
                }
            };
        run(
            sd2(),
            [999.0, 666.0, 333.0, 0.0],
            [14.614647, 2.918308, 0.932358, 0.029168],
            14.614647,
            [
                [-2.059652, -24.548111, 21.487772],
                [-2.586744, -23.058189, 20.789993],
                [-2.382962, -23.617058, 20.737591],
                [-2.394629, -23.62289, 20.746342],
            ],
        );
        let mut v = sd2();
        v.prediction_type = "v_prediction".into();
        v.timestep_spacing = Some("leading".into());
        run(
            v,
            [751.0, 501.0, 251.0, 1.0],
            [4.116698, 1.623693, 0.698399, 0.041314],
            4.236414,
            [
                [0.145635, -1.570633, 1.790975],
                [-0.198957, -0.049776, 0.587614],
                [0.004903, -0.37586, 0.358862],
                [-0.011617, -0.383476, 0.370634],
            ],
        );
        let mut tr = sd2();
        tr.timestep_spacing = Some("trailing".into());
        run(
            tr,
            [999.0, 749.0, 499.0, 249.0],
            [14.614647, 4.081731, 1.612887, 0.693205],
            14.614647,
            [
                [-1.569074, -24.09684, 21.800232],
                [-2.358002, -21.978268, 20.915073],
                [-1.719463, -22.767239, 20.724142],
                [-1.996745, -22.90588, 20.932104],
            ],
        );
        // linspace at 20 steps gives fractional timesteps, as diffusers' np.linspace does.
        let (ts, _, _) = Scheduler::new(sd2()).unwrap().euler_plan(20);
        assert!((ts[1] - 946.421_05).abs() < 1e-3, "{}", ts[1]);
    }

    #[test]
    fn a_perfect_model_lands_on_its_sample() {
        // With the true noise as the model's output, one DDIM step from t to 0 returns x0.
        let s = Scheduler::new(sd2()).unwrap();
        let x0 = vec![0.3f32, -0.7, 1.2];
        let noise = vec![0.5f32, 1.0, -0.2];
        let xt = s.add_noise(&x0, &noise, 501);
        let (_, est) = s.step(SamplerKind::Ddim, &xt, &noise, 501, 2, &mut Rng::new(0));
        for (a, b) in est.iter().zip(&x0) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn numbers_outside_a_schedule_are_refused_by_field() {
        let with = |f: fn(&mut SchedulerConfig)| {
            let mut c = sd2();
            f(&mut c);
            Scheduler::new(c).unwrap_err()
        };
        assert!(with(|c| c.num_train_timesteps = 1_000_000_000_000).contains("`num_train_timesteps` is 1000000000000"));
        assert!(with(|c| c.num_train_timesteps = 1).contains("num_train_timesteps"));
        assert!(with(|c| c.clip_sample_range = -1.0).contains("`clip_sample_range` is -1"));
        assert!(with(|c| c.clip_sample_range = f64::NAN).contains("clip_sample_range"));
        assert!(with(|c| c.beta_end = 2.0).contains("`beta_end` 2"));
        assert!(with(|c| c.beta_start = -0.5).contains("betas must lie in [0, 1)"));
        assert!(with(|c| c.steps_offset = 5000).contains("`steps_offset` is 5000"));
        let e = with(|c| {
            c.num_train_timesteps = 3;
            c.trained_betas = Some(vec![0.1, 1.5, 0.2]);
        });
        assert!(e.contains("`trained_betas`[1] is 1.5"), "{e}");
    }

    #[test]
    fn other_families_are_refused() {
        let mut c = sd2();
        c.class_name = "FlowMatchEulerDiscreteScheduler".into();
        assert!(Scheduler::new(c).unwrap_err().contains("not supported"));
        let mut c = sd2();
        c.prediction_type = "sample".into();
        assert!(Scheduler::new(c).is_err());
    }
}
