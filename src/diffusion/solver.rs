//! The samplers' steps, one `Step` trait that both denoising loops drive — the scene model's
//! (`sampler`) and Stable Diffusion's (`sd::inpaint`, through `sd::scheduler`): DDIM, DDPM,
//! DPM-Solver++ (2M) and Euler-ancestral, each from a latent at one noise level to the next.
//!
//! DPM-Solver++ (2M): Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models" (2022), the multistep second-order solver in data-prediction form, as
//! diffusers' `DPMSolverMultistepScheduler` runs it (algorithm `dpmsolver++`, order 2,
//! midpoint, the last step to σ = 0 of first order). diffusers' documentation says 20 of its
//! steps give high-quality samples (not compared here on real weights, which are not here);
//! 25 are half the network evaluations of 50 DDIM steps. Both samplers use it: the scene
//! model's (`sampler`) and Stable Diffusion's (`sd::inpaint`). Beside it, Euler-ancestral
//! (`euler_ancestral_step`), as diffusers' `EulerAncestralDiscreteScheduler` steps.
//!
//! Noise levels are the variance-exploding σ = √((1 − ᾱ) / ᾱ): a latent at σ is
//! α (x₀ + σ ε) with α = 1 / √(σ² + 1), and the solver's log-SNR is λ = −ln σ.

/// α and the variance-preserving σ (α·σ) of a noise level σ.
pub fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// σ of a cumulative ᾱ.
pub fn sigma_of(alpha_bar: f64) -> f64 {
    ((1.0 - alpha_bar) / alpha_bar).sqrt()
}

use crate::rng::Rng;
use crate::settings::SamplerKind;

/// One sampler's step from the latent `x` (variance preserving) at noise level `sigma_s`, whose
/// clean estimate is `x0` and noise estimate `eps`, to the level `sigma_t` (0: the end); `rng`
/// gives the fresh noise a stochastic sampler adds. A sampler may remember earlier steps
/// (DPM-Solver's second order): one value runs one loop.
pub trait Step {
    fn step(&mut self, x: &[f32], x0: &[f32], eps: &[f32], sigma_s: f64, sigma_t: f64, rng: &mut Rng) -> Vec<f32>;
}

/// The sampler `kind` steps with, fresh for a loop.
pub fn stepper(kind: SamplerKind) -> Box<dyn Step> {
    match kind {
        SamplerKind::Ddim => Box::new(Ddim),
        SamplerKind::Ddpm => Box::new(Ddpm),
        SamplerKind::DpmSolver | SamplerKind::DpmSolverKarras => Box::new(DpmSolver2M::default()),
        SamplerKind::EulerAncestral => Box::new(EulerAncestral),
    }
}

/// ᾱ of a noise level σ.
pub fn alpha_bar_of(sigma: f64) -> f64 {
    1.0 / (sigma * sigma + 1.0)
}

/// DDIM (Song et al. 2021), η = 0: the clean estimate at the next level plus the same noise
/// estimate, √ᾱ_t·x0 + √(1 − ᾱ_t)·ε.
pub struct Ddim;

impl Step for Ddim {
    fn step(&mut self, _x: &[f32], x0: &[f32], eps: &[f32], _sigma_s: f64, sigma_t: f64, _rng: &mut Rng) -> Vec<f32> {
        let ap = alpha_bar_of(sigma_t);
        let (c0, c1) = (ap.sqrt() as f32, (1.0 - ap).sqrt() as f32);
        x0.iter().zip(eps).map(|(x0, e)| c0 * x0 + c1 * e).collect()
    }
}

/// DDPM (Ho et al. 2020): a draw from the posterior q(x_t | x_s, x0) over the stride, as
/// diffusers' `DDPMScheduler` takes it (mean c0·x0 + c1·x from x itself, so a clipped clean
/// estimate stays diffusers'; the variance β̃). Where x is consistent with x0 and ε this is
/// DDIM with η = 1.
pub struct Ddpm;

impl Step for Ddpm {
    fn step(&mut self, x: &[f32], x0: &[f32], _eps: &[f32], sigma_s: f64, sigma_t: f64, rng: &mut Rng) -> Vec<f32> {
        let (a, ap) = (alpha_bar_of(sigma_s), alpha_bar_of(sigma_t));
        let alpha_t = a / ap;
        let beta_t = 1.0 - alpha_t;
        let c0 = (ap.sqrt() * beta_t / (1.0 - a)) as f32;
        let c1 = (alpha_t.sqrt() * (1.0 - ap) / (1.0 - a)) as f32;
        let sd = ((1.0 - ap) / (1.0 - a) * beta_t).max(0.0).sqrt() as f32;
        let noise = rng.normals(x.len());
        x0.iter().zip(x).zip(noise).map(|((x0, x), z)| c0 * x0 + c1 * x + sd * z).collect()
    }
}

/// Euler-ancestral as a `Step` (`euler_ancestral_step`).
pub struct EulerAncestral;

impl Step for EulerAncestral {
    fn step(&mut self, x: &[f32], x0: &[f32], _eps: &[f32], sigma_s: f64, sigma_t: f64, rng: &mut Rng) -> Vec<f32> {
        euler_ancestral_step(x, x0, sigma_s, sigma_t, &rng.normals(x.len()))
    }
}

impl Step for DpmSolver2M {
    fn step(&mut self, x: &[f32], x0: &[f32], _eps: &[f32], sigma_s: f64, sigma_t: f64, _rng: &mut Rng) -> Vec<f32> {
        self.advance(x, x0, sigma_s, sigma_t)
    }
}

/// The solver's memory: the previous step's clean estimate and its σ.
#[derive(Default)]
pub struct DpmSolver2M {
    previous: Option<(Vec<f32>, f64)>,
}

impl DpmSolver2M {
    /// From `x` at noise level `sigma_s`, whose clean estimate is `x0`, to level `sigma_t`
    /// (0: the end). First order on the first step and to σ = 0 (`last`), second order
    /// (with the previous estimate) otherwise.
    pub fn advance(&mut self, x: &[f32], x0: &[f32], sigma_s: f64, sigma_t: f64) -> Vec<f32> {
        let next = if sigma_t <= 0.0 {
            // λ_t = ∞: the step lands on the clean estimate.
            x0.to_vec()
        } else {
            let (alpha_t, vp_t) = alpha_sigma(sigma_t);
            let (_, vp_s) = alpha_sigma(sigma_s);
            let h = (sigma_s / sigma_t).ln();
            let decay = (vp_t / vp_s) as f32;
            let c = (-alpha_t * ((-h).exp() - 1.0)) as f32;
            match &self.previous {
                None => x.iter().zip(x0).map(|(&x, &d0)| decay * x + c * d0).collect(),
                Some((m1, sigma_s1)) => {
                    // D1 = (m0 − m1) / r0, r0 = h_0 / h: the estimate's change per unit of λ.
                    let h0 = (sigma_s1 / sigma_s).ln();
                    let r = (h / h0) as f32;
                    x.iter()
                        .zip(x0)
                        .zip(m1)
                        .map(|((&x, &d0), &m1)| decay * x + c * d0 + 0.5 * c * r * (d0 - m1))
                        .collect()
                }
            }
        };
        self.previous = Some((x0.to_vec(), sigma_s));
        next
    }
}

/// One step of Euler-ancestral (Karras et al.'s Euler method with ancestral noise, as
/// diffusers' `EulerAncestralDiscreteScheduler` takes it): from the latent `x` at noise level
/// `sigma_s` (variance preserving, as the samplers keep it) whose clean estimate is `x0`, an
/// Euler step down to σ_down, then `noise` (standard normal) scaled to σ_up, so that the
/// latent lands at `sigma_t` with part of its noise fresh: σ_up² = σ_t²(σ_s² − σ_t²)/σ_s²,
/// σ_down² = σ_t² − σ_up². To σ_t = 0 the step lands on `x0`.
pub fn euler_ancestral_step(x: &[f32], x0: &[f32], sigma_s: f64, sigma_t: f64, noise: &[f32]) -> Vec<f32> {
    if sigma_t <= 0.0 {
        return x0.to_vec();
    }
    let up = (sigma_t * sigma_t * (sigma_s * sigma_s - sigma_t * sigma_t) / (sigma_s * sigma_s)).max(0.0).sqrt();
    let down = (sigma_t * sigma_t - up * up).max(0.0).sqrt();
    let (alpha_s, _) = alpha_sigma(sigma_s);
    let (alpha_t, _) = alpha_sigma(sigma_t);
    // In the variance-exploding frame (x / α) the step is x + (x − x0)/σ_s · (σ_down − σ_s).
    let keep = (down / sigma_s) as f32;
    let (to_ve, to_vp) = ((1.0 / alpha_s) as f32, alpha_t as f32);
    let up = up as f32;
    x.iter()
        .zip(x0)
        .zip(noise)
        .map(|((&x, &x0), &z)| {
            let ve = x * to_ve;
            to_vp * (x0 + keep * (ve - x0) + up * z)
        })
        .collect()
}

/// Karras et al.'s noise levels (ρ = 7) from `sigma_max` down to `sigma_min`, `n` of them.
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let rho = 7.0;
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    (0..n)
        .map(|i| {
            let ramp = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
            (hi + ramp * (lo - hi)).powf(rho)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a model that always knows the clean sample, every step stays on the line from the
    /// sample to the noise, and the last lands on the sample.
    #[test]
    fn a_perfect_model_is_followed_to_its_sample() {
        let (x0, noise) = (vec![0.3f32, -0.7, 1.2], vec![0.5f32, 1.0, -0.2]);
        let sigmas = [14.6, 6.0, 2.1, 0.7, 0.2, 0.0];
        let noised = |s: f64| -> Vec<f32> {
            let (a, _) = alpha_sigma(s);
            x0.iter().zip(&noise).map(|(x, n)| (a * (*x as f64 + s * *n as f64)) as f32).collect()
        };
        let mut solver = DpmSolver2M::default();
        let mut x = noised(sigmas[0]);
        for w in sigmas.windows(2) {
            x = solver.advance(&x, &x0, w[0], w[1]);
            let want = if w[1] > 0.0 { noised(w[1]) } else { x0.clone() };
            for (a, b) in x.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{x:?} vs {want:?} at σ {}", w[1]);
            }
        }
    }

    /// DDPM's posterior step, where x is consistent with x0 and ε, is DDIM's with η = 1
    /// (Song et al. 2021, eq. 16): the two loops' old DDPM formulas agree.
    #[test]
    fn ddpm_is_ddim_with_eta_one() {
        let (x0, eps) = (vec![0.3f32, -0.7, 1.2, 0.05], vec![0.5f32, 1.0, -0.2, -1.4]);
        let (s, t) = (2.0, 0.7);
        let (a, ap) = (alpha_bar_of(s), alpha_bar_of(t));
        let x: Vec<f32> =
            x0.iter().zip(&eps).map(|(x0, e)| (a.sqrt() * *x0 as f64 + (1.0 - a).sqrt() * *e as f64) as f32).collect();
        let got = Ddpm.step(&x, &x0, &eps, s, t, &mut Rng::new(5));
        let z = Rng::new(5).normals(4);
        let var = (1.0 - ap) / (1.0 - a) * (1.0 - a / ap);
        for j in 0..4 {
            let want = ap.sqrt() * x0[j] as f64 + (1.0 - ap - var).sqrt() * eps[j] as f64 + var.sqrt() * z[j] as f64;
            assert!((got[j] as f64 - want).abs() < 1e-5, "{got:?} at {j}: {want}");
        }
        // To σ = 0 both land on the clean estimate.
        assert_eq!(Ddpm.step(&x, &x0, &eps, s, 0.0, &mut Rng::new(1)), x0);
        assert_eq!(Ddim.step(&x, &x0, &eps, s, 0.0, &mut Rng::new(1)), x0);
    }

    #[test]
    fn karras_levels_span_the_range() {
        let s = karras_sigmas(5, 0.03, 14.6);
        assert!((s[0] - 14.6).abs() < 1e-9 && (s[4] - 0.03).abs() < 1e-9);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }
}
