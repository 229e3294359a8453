//! A job's settings: what the person chose (`settings::RunSettings`) plus what only code and
//! tests set (network size, cache use, scoring). `FillSettings::apply_run` is the one place a
//! person's choices become a job's, validated against `settings::LIMITS`.

use crate::align::Diagnostics;
use crate::diffusion::patch::PatchSettings;
use crate::diffusion::train::LearnSettings;
use crate::diffusion::unet::UNetSpec;
use crate::error::Result;
use crate::settings::{EngineKind, RunSettings, SamplerKind, SdSettings};
use crate::switches::Switches;

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
    /// What the alignment explains as it works (`REALFILL_DEBUG_ALIGN`, `…_PARALLAX`).
    #[serde(skip)]
    pub diagnostics: Diagnostics,
    /// The memory budget in GiB, instead of ¾ of the machine's (`REALFILL_MEMORY_GIB`).
    #[serde(skip)]
    pub memory_gib: Option<f64>,
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
            diagnostics: Diagnostics::default(),
            memory_gib: None,
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

    /// These settings under the measuring and tuning switches (`switches`, read once at
    /// start-up by whoever makes the job: the command line, the app, the bench): the
    /// alignment's diagnostics, the memory budget and the patch engine's overrides, which
    /// are checked here (an unknown field is an error naming it).
    pub fn with_switches(mut self, sw: &Switches) -> Result<FillSettings> {
        self.diagnostics = Diagnostics { dir: sw.debug_align.clone(), parallax: sw.debug_parallax };
        self.memory_gib = sw.memory_gib;
        if let Some(o) = &sw.patch {
            self.patch = self.patch.overridden(o)?;
        }
        Ok(self)
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

    #[test]
    fn the_switches_reach_a_job_as_values() {
        let sw = Switches::parse(|name| match name {
            "REALFILL_DEBUG_ALIGN" => Some("/tmp/why".into()),
            "REALFILL_DEBUG_PARALLAX" => Some("1".into()),
            "REALFILL_MEMORY_GIB" => Some("3".into()),
            "REALFILL_PATCH" => Some(r#"{"fine_steps":2}"#.into()),
            _ => None,
        })
        .unwrap();
        let s = FillSettings::default().with_switches(&sw).unwrap();
        assert_eq!(s.diagnostics.dir.as_deref(), Some(std::path::Path::new("/tmp/why")));
        assert!(s.diagnostics.parallax);
        assert_eq!((s.memory_gib, s.patch.fine_steps), (Some(3.0), 2));
        // Without switches a job explains nothing and keeps its settings.
        let plain = FillSettings::default().with_switches(&Switches::default()).unwrap();
        assert!(!plain.diagnostics.on() && !plain.diagnostics.parallax && plain.memory_gib.is_none());
        assert_eq!(plain.patch, PatchSettings::default());
        // An override naming no setting is refused.
        let bad = Switches::parse(|n| (n == "REALFILL_PATCH").then(|| r#"{"pach":5}"#.into())).unwrap();
        let e = FillSettings::default().with_switches(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown field \"pach\""), "{e}");
    }
}
