//! A job's settings: what the person chose (`settings::RunSettings`) plus what only code and
//! tests set (network size, cache use, scoring). `FillSettings::apply_run` is the one place a
//! person's choices become a job's, validated against `settings::LIMITS`.

use crate::diffusion::patch::PatchSettings;
use crate::diffusion::train::LearnSettings;
use crate::diffusion::unet::UNetSpec;
use crate::error::Result;
use crate::settings::{EngineKind, RunSettings, SamplerKind, SdSettings};

/// Everything a Learn or Fill job needs to know besides the scene.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FillSettings {
    pub engine: EngineKind,
    pub patch: PatchSettings,
    /// Long side of the working size (multiple of 8 after rounding).
    pub size: usize,
    pub steps: usize,
    pub seed: u64,
    pub sampler: SamplerKind,
    pub learn: LearnSettings,
    pub spec: UNetSpec,
    /// Read and write the on-disk model cache.
    pub use_cache: bool,
    /// Score the result's agreement with the references (ranks candidates).
    pub score: bool,
    /// Also return the result as a `Photo` (float copy made on the worker; the app needs it).
    #[serde(default)]
    pub result_photo: bool,
    /// The Stable Diffusion engine's model folder, prompt, guidance and steps.
    #[serde(default)]
    pub sd: SdSettings,
}

impl Default for FillSettings {
    fn default() -> Self {
        let mut s = FillSettings {
            engine: EngineKind::Auto,
            patch: PatchSettings::default(),
            size: 0,
            steps: 0,
            seed: 0,
            sampler: SamplerKind::Ddim,
            learn: LearnSettings::default(),
            spec: UNetSpec::default(),
            use_cache: true,
            score: false,
            result_photo: false,
            sd: SdSettings::default(),
        };
        s.set_run(&RunSettings::default());
        s
    }
}

impl FillSettings {
    /// A job with the person's choices `r` and defaults for the rest.
    pub fn from_run(r: &RunSettings) -> Result<FillSettings> {
        let mut s = FillSettings::default();
        s.apply_run(r)?;
        Ok(s)
    }

    /// Set the person's choices `r` on this template (network size and cache use stay), after
    /// checking them against `settings::LIMITS`.
    pub fn apply_run(&mut self, r: &RunSettings) -> Result<()> {
        r.validate()?;
        self.set_run(r);
        Ok(())
    }

    fn set_run(&mut self, r: &RunSettings) {
        self.engine = r.engine;
        self.size = r.size;
        self.steps = r.steps;
        self.seed = r.seed;
        self.sampler = r.sampler;
        self.score = r.candidates > 1;
        self.learn.steps = r.learn_steps;
        self.learn.batch = r.batch;
        self.learn.crop = r.crop;
        self.learn.seed = r.seed;
        self.sd = r.sd.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_the_template_and_sets_the_persons_choices() {
        let mut t = FillSettings { use_cache: false, ..Default::default() };
        t.spec.channels = vec![8, 16];
        let r = RunSettings {
            engine: EngineKind::SceneModel,
            size: 96,
            seed: 7,
            candidates: 3,
            batch: 2,
            ..Default::default()
        };
        t.apply_run(&r).unwrap();
        assert_eq!((t.engine, t.size, t.seed, t.learn.seed, t.learn.batch), (EngineKind::SceneModel, 96, 7, 7, 2));
        assert!(t.score, "several candidates are scored");
        assert!(!t.use_cache && t.spec.channels == [8, 16], "the template's own fields stay");
        assert!(t.apply_run(&RunSettings { batch: 0, ..Default::default() }).is_err());
    }

    #[test]
    fn defaults_come_from_the_run_defaults() {
        let s = FillSettings::default();
        let r = RunSettings::default();
        assert_eq!(
            (s.size, s.steps, s.learn.steps, s.learn.batch, s.learn.crop),
            (r.size, r.steps, r.learn_steps, r.batch, r.crop)
        );
    }
}
