//! The results of the last Fill, one per seed, and which of them the document shows. Picking
//! one right after the fill replaces the fill in place; after an edit it is a new undo step.

use std::sync::Arc;

use super::commands::Command;
use super::document::Document;
use super::messages::{Level, Message};
use crate::engine::sources::Sources;
use crate::scene::Photo;
use crate::settings::EngineKind;

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
    pub sources: Arc<Sources>,
    pub ref_names: Vec<String>,
}

#[derive(Default)]
pub struct Candidates {
    pub(super) list: Vec<Candidate>,
    /// The candidate shown on the canvas.
    pub(super) selected: usize,
    /// The document revision the shown candidate was applied at (a later edit makes picking
    /// another candidate a new undo step).
    applied_revision: Option<u64>,
}

impl Candidates {
    /// Forget the candidates, freeing their photos (hundreds of megabytes each on a camera
    /// photo) off the UI thread.
    pub fn clear(&mut self) {
        let old = std::mem::take(&mut self.list);
        if !old.is_empty() {
            std::thread::spawn(move || drop(old));
        }
    }

    /// A new Fill starts: nothing of the last one is shown any more.
    pub fn restart(&mut self) {
        self.clear();
        self.selected = 0;
        self.applied_revision = None;
    }

    pub fn push(&mut self, c: Candidate) {
        self.list.push(c);
    }

    /// Whether `doc` shows a candidate, untouched since it was applied.
    pub fn shown_on(&self, doc: &Document) -> bool {
        self.applied_revision == Some(doc.revision)
    }

    /// The first candidate of a fill goes on the canvas as one undo step.
    pub fn accept_first(&mut self, doc: &mut Document) {
        doc.accept_fill(self.list[0].photo.clone());
        self.applied_revision = Some(doc.revision);
        self.selected = 0;
    }

    /// Show candidate `i` on the canvas.
    pub fn pick(&mut self, i: usize, doc: &mut Document) {
        let Some(c) = self.list.get(i) else { return };
        if self.shown_on(doc) {
            doc.replace_target(c.photo.clone());
        } else {
            doc.accept_fill(c.photo.clone());
        }
        self.applied_revision = Some(doc.revision);
        self.selected = i;
    }

    /// Order candidates best first; show the best unless the user picked or edited meanwhile.
    pub fn rank(&mut self, doc: Option<&mut Document>) {
        let shown_seed = self.list.get(self.selected).map(|c| c.seed);
        let untouched = self.selected == 0 && doc.as_ref().map(|d| d.revision) == self.applied_revision;
        self.list.sort_by(|a, b| b.agreement.unwrap_or(0.0).total_cmp(&a.agreement.unwrap_or(0.0)));
        if untouched {
            if self.list[0].seed != shown_seed.unwrap_or(u64::MAX)
                && let Some(doc) = doc
            {
                self.pick(0, doc);
            }
            self.selected = 0;
        } else {
            self.selected = self.list.iter().position(|c| Some(c.seed) == shown_seed).unwrap_or(0);
        }
    }

    /// The sources of the result on screen and its references' names, for the tint: only
    /// while the result is untouched (an edit makes the tint wrong).
    pub fn tint(&self, doc: &Document, on: bool) -> Option<(&Arc<Sources>, &[String])> {
        let shows_result = self.shown_on(doc);
        self.list.get(self.selected).filter(|_| on && shows_result).map(|c| (&c.sources, c.ref_names.as_slice()))
    }
}

/// Much of the fill invented (no reference shows that part): what to say, offering Stable
/// Diffusion when its folder is set (it imagines what no reference shows; the patch engine can
/// only continue the photo's own texture there).
pub fn invented_note(sources: &Sources, engine: EngineKind, sd_model_set: bool) -> Option<Message> {
    let invented = sources.invented();
    if invented < INVENTED_OFFER || engine == EngineKind::StableDiffusion {
        return None;
    }
    let share = format!("{:.0} % of the fill is invented: no reference aligns with that part", 100.0 * invented);
    Some(if sd_model_set {
        Message {
            level: Level::Info,
            text: format!("{share}. Stable Diffusion can imagine it."),
            action: Some(("Fill with Stable Diffusion".into(), Command::FillWithStableDiffusion)),
        }
    } else {
        Message {
            level: Level::Info,
            text: format!(
                "{share} (Sources shows which). A photo that shows it, added as a reference, or a Stable Diffusion \
                 folder (Run panel) would fill it."
            ),
            action: None,
        }
    })
}
