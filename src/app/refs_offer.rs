//! Another photo is another scene: when one opens over a document with references, they are
//! set aside and the person is asked once whether this photo keeps them (the default is a new
//! scene).

use std::sync::Arc;

use crate::scene::Photo;

/// The references of the photo open before, and that photo's name.
pub struct RefsOffer {
    pub(super) refs: Vec<Arc<Photo>>,
    from: String,
}

impl RefsOffer {
    pub fn new(refs: Vec<Arc<Photo>>, from: String) -> RefsOffer {
        RefsOffer { refs, from }
    }

    /// The question; Some(keep) once answered.
    pub fn ask(&self, ctx: &egui::Context) -> Option<bool> {
        let mut keep = None;
        egui::Modal::new(egui::Id::unique("keep-references")).show(ctx, |ui| {
            let n = self.refs.len();
            let photos = if n == 1 { "reference photo" } else { "reference photos" };
            ui.heading(format!("Keep the {n} {photos} of {}?", self.from));
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
        keep
    }
}
