//! How the document is shown: the canvas (view, tool, textures), the before/after and source
//! tint switches, and the references' thumbnails. Nothing here changes the document.

use std::sync::Arc;

use super::canvas::{self, Canvas};
use crate::scene::{Extension, Photo};

#[derive(Default)]
pub struct DocView {
    pub(super) canvas: Canvas,
    /// The "Before" toggle button (holding \\ also shows the photo before the last fill).
    pub(super) before_toggle: bool,
    /// The photo before the last fill is shown this frame (the toggle, or \\ held).
    pub(super) show_before: bool,
    /// Before/after side by side on the canvas.
    pub(super) split: bool,
    /// Tint the shown result by where its pixels came from.
    pub(super) source_tint: bool,
    pub(super) ref_thumbs: ThumbCache,
}

impl DocView {
    /// Fit the canvas to the window at the next frame (a new document, the Fit button).
    pub fn fit(&mut self) {
        self.canvas.view.fit_pending = true;
    }

    /// One photo pixel per screen pixel, about the pointer when it is over the canvas.
    pub fn actual_pixels(&mut self, ctx: &egui::Context) {
        let area = self.canvas.area;
        let pointer = ctx.input(|i| i.pointer.hover_pos());
        self.canvas.view.actual_pixels(area, pointer, ctx.pixels_per_point());
    }

    /// Zoom about the canvas's centre.
    pub fn zoom(&mut self, factor: f32) {
        let area = self.canvas.area;
        self.canvas.view.zoom_at(area, area.center(), factor);
    }

    /// The canvas extension changed from `old` to `new`: keep the photo still on screen when
    /// the canvas grows left or up.
    pub fn extension_changed(&mut self, old: Extension, new: Extension) {
        let shift = egui::vec2(new.left as f32 - old.left as f32, new.top as f32 - old.top as f32);
        self.canvas.view.offset -= shift * self.canvas.view.zoom;
    }
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
            canvas::thumbnail(&p.original, 160),
            egui::TextureOptions::LINEAR,
        );
        // Forget thumbnails of removed references.
        self.items.retain(|(q, _)| Arc::strong_count(q) > 1);
        self.items.push((p.clone(), tex.clone()));
        tex
    }
}
