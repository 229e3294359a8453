//! The canvas: the target photo on its (possibly extended) canvas, with zoom and pan, the mask
//! as a translucent overlay, the extension as a checkerboard, brush and eraser, edge handles
//! to extend the canvas, and the live fill preview on top.
//!
//! Coordinates: "canvas pixels" are pixels of the extended canvas (the target starts at
//! (extension.left, extension.top)); the view maps them to screen points.

use std::sync::{Arc, Weak};

use egui::{Color32, CursorIcon, Pos2, Rect, Sense, Stroke, StrokeKind, TextureHandle, TextureOptions, Vec2};

use super::document::{Document, PixelRect};
use super::mask_overlay::MaskOverlay;
use crate::engine::sources::Sources;
use crate::scene::{Extension, Photo};

/// Longest side of the CPU mask overlay's texture, drawn where there is no wgpu (it is shown
/// downsampled on larger photos, and rebuilt whenever the document changes, so it must stay
/// cheap; `mask_overlay` keeps the mask at full resolution on the GPU).
const MAX_TEXTURE: usize = 2048;
/// Side of the photo's texture tiles: within every adapter's texture limit (2048 is wgpu's
/// downlevel minimum), so a photo of any size shows its true pixels at 100 %; small enough
/// that uploading one (4 MiB) fits in a frame when a large photo's tiles are paced.
pub const TILE: usize = 1024;
const MASK_TINT: [u8; 4] = [255, 64, 64, 110];
/// The same tint for the GPU overlay.
const MASK_TINT_COLOUR: Color32 =
    Color32::from_rgba_unmultiplied_const(MASK_TINT[0], MASK_TINT[1], MASK_TINT[2], MASK_TINT[3]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Brush,
    Eraser,
    /// Drag a rectangle to add to the mask (Alt: take away).
    Rectangle,
    /// Drag a free outline to add to the mask (Alt: take away).
    Lasso,
}

impl Tool {
    fn paints(self) -> bool {
        matches!(self, Tool::Brush | Tool::Eraser)
    }
}

/// A selection being dragged: canvas points (the rectangle's two corners, or the lasso's
/// outline) and whether it takes away from the mask.
struct Selection {
    tool: Tool,
    points: Vec<[f32; 2]>,
    subtract: bool,
}

impl Selection {
    /// The closed outline in canvas coordinates.
    fn outline(&self) -> Vec<[f32; 2]> {
        match (self.tool, self.points.as_slice()) {
            (Tool::Rectangle, [a, .., b]) => vec![*a, [b[0], a[1]], *b, [a[0], b[1]]],
            _ => self.points.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Top,
    Right,
    Bottom,
}

/// Screen points per canvas pixel, and where canvas pixel (0, 0) sits relative to the
/// canvas area's top-left corner.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub zoom: f32,
    pub offset: Vec2,
    /// Fit the canvas into the area at the next frame.
    pub fit_pending: bool,
    /// The view is as `fit` left it (no zoom or pan since): it refits when the area changes
    /// size, so a candidate strip or a message line never covers part of the photo.
    pub fitted: bool,
}

impl Default for View {
    fn default() -> Self {
        View { zoom: 1.0, offset: Vec2::ZERO, fit_pending: true, fitted: false }
    }
}

impl View {
    pub fn to_screen(&self, area: Rect, p: [f32; 2]) -> Pos2 {
        area.min + self.offset + Vec2::new(p[0], p[1]) * self.zoom
    }

    pub fn to_canvas(&self, area: Rect, s: Pos2) -> [f32; 2] {
        let v = (s - area.min - self.offset) / self.zoom;
        [v.x, v.y]
    }

    pub fn fit(&mut self, area: Rect, canvas: (usize, usize)) {
        let (w, h) = (canvas.0.max(1) as f32, canvas.1.max(1) as f32);
        self.zoom = (0.95 * (area.width() / w).min(area.height() / h)).clamp(0.01, 32.0);
        self.offset = (area.size() - Vec2::new(w, h) * self.zoom) * 0.5;
        self.fit_pending = false;
        self.fitted = true;
    }

    /// Zoom by `factor` keeping the canvas point under `anchor` (screen) in place.
    pub fn zoom_at(&mut self, area: Rect, anchor: Pos2, factor: f32) {
        let before = self.to_canvas(area, anchor);
        self.zoom = (self.zoom * factor).clamp(0.01, 32.0);
        let after = self.to_screen(area, before);
        self.offset += anchor - after;
        self.fitted = false;
    }

    /// Show canvas pixels 1:1 (physical pixels), keeping the canvas point under `anchor` in
    /// place (the pointer where it is over the canvas, as photo editors do; else the centre)
    /// to within half a pixel: the photo's corner lands on a whole physical pixel, so each
    /// photo pixel is one screen pixel, not a resampled blend of two (the view was up to 20 %
    /// softer than the file).
    pub fn actual_pixels(&mut self, area: Rect, anchor: Option<Pos2>, pixels_per_point: f32) {
        let factor = (1.0 / pixels_per_point) / self.zoom;
        self.zoom_at(area, anchor.filter(|p| area.contains(*p)).unwrap_or(area.center()), factor);
        self.zoom = 1.0 / pixels_per_point;
        let corner = (area.min.to_vec2() + self.offset) * pixels_per_point;
        self.offset = Vec2::new(corner.x.round(), corner.y.round()) / pixels_per_point - area.min.to_vec2();
    }
}

/// A photo at full resolution as texture tiles (mipmapped, so that it stays smooth zoomed out).
struct PhotoTexture {
    photo: Arc<Photo>,
    tiles: Vec<Tile>,
}

/// One tile: photo pixels [x0, x0 + w) × [y0, y0 + h).
pub struct Tile {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
    tex: TextureHandle,
}

impl PhotoTexture {
    /// With `paced`, one tile per frame (for a thread making a camera photo's tiles: the GPU
    /// upload happens in the frame that follows, and all of a 48 MP photo's at once took
    /// 265 ms of one frame).
    fn new(ctx: &egui::Context, name: &str, photo: &Arc<Photo>, paced: bool) -> PhotoTexture {
        let opts = TextureOptions { mipmap_mode: Some(egui::TextureFilter::Linear), ..TextureOptions::LINEAR };
        let (pw, ph) = (photo.width(), photo.height());
        let mut tiles = Vec::new();
        for y0 in (0..ph).step_by(TILE) {
            for x0 in (0..pw).step_by(TILE) {
                let (w, h) = (TILE.min(pw - x0), TILE.min(ph - y0));
                let img = photo_tile(photo, x0, y0, w, h);
                let tex = ctx.load_texture(format!("{name}-{x0}-{y0}"), img, opts);
                tiles.push(Tile { x0, y0, w, h, tex });
                if paced {
                    ctx.request_repaint();
                    std::thread::sleep(std::time::Duration::from_millis(16));
                }
            }
        }
        PhotoTexture { photo: photo.clone(), tiles }
    }

    /// Draw the photo with its top-left corner at canvas pixel (cx, cy); tiles off screen are
    /// skipped.
    fn paint(&self, painter: &egui::Painter, view: &View, area: Rect, cx: f32, cy: f32) {
        let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
        for t in &self.tiles {
            let (x0, y0) = (cx + t.x0 as f32, cy + t.y0 as f32);
            let r = Rect::from_min_max(
                view.to_screen(area, [x0, y0]),
                view.to_screen(area, [x0 + t.w as f32, y0 + t.h as f32]),
            );
            if r.intersects(area) {
                painter.image(t.tex.id(), r, uv, Color32::WHITE);
            }
        }
    }
}

fn divisor(w: usize, h: usize) -> usize {
    w.max(h).div_ceil(MAX_TEXTURE).max(1)
}

/// Photo pixels [x0, x0 + w) × [y0, y0 + h) as an image to upload.
fn photo_tile(p: &Photo, x0: usize, y0: usize, w: usize, h: usize) -> egui::ColorImage {
    let mut rgba = vec![255u8; w * h * 4];
    for y in 0..h {
        for x in 0..w {
            let v = p.rgb.get(x0 + x, y0 + y);
            let o = 4 * (y * w + x);
            for c in 0..3 {
                rgba[o + c] = (v[c].clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            }
        }
    }
    egui::ColorImage::from_rgba_unmultiplied([w, h], &rgba)
}

/// The overlay for `rect` (target pixels) at the texture's scale.
fn overlay_image(doc: &Document, rect: PixelRect, k: usize) -> ([usize; 2], egui::ColorImage) {
    let m = &doc.mask;
    let (x0, y0) = (rect.x0 / k, rect.y0 / k);
    let (x1, y1) = (rect.x1.div_ceil(k).min(m.width.div_ceil(k)), rect.y1.div_ceil(k).min(m.height.div_ceil(k)));
    let (w, h) = (x1.saturating_sub(x0).max(1), y1.saturating_sub(y0).max(1));
    let mut rgba = vec![0u8; w * h * 4];
    for y in 0..h {
        for x in 0..w {
            let (mx, my) = (((x0 + x) * k).min(m.width - 1), ((y0 + y) * k).min(m.height - 1));
            if m.get(mx, my) {
                rgba[4 * (y * w + x)..4 * (y * w + x) + 4].copy_from_slice(&MASK_TINT);
            }
        }
    }
    ([x0, y0], egui::ColorImage::from_rgba_unmultiplied([w, h], &rgba))
}

struct EdgeDrag {
    side: Side,
    start: Extension,
    pointer: Pos2,
}

/// What the canvas needs besides the document.
pub struct Overlay<'a> {
    /// Editing is locked while a job works on the document.
    pub editable: bool,
    /// The newest preview (texture over the whole canvas of the job) and its step.
    pub preview: Option<(&'a TextureHandle, usize, usize)>,
    /// Finished strips of the native-resolution fill, drawn over the preview.
    pub native: &'a [NativeTexture],
    /// Show the photo as it was before the last fill.
    pub show_before: bool,
    /// Before on the left of a draggable divider, after on the right.
    pub split: bool,
    /// Tint the fill by where its pixels came from (the shown result's sources and the
    /// references' names, for the legend).
    pub tint: Option<(&'a Arc<Sources>, &'a [String])>,
}

pub struct Canvas {
    pub view: View,
    pub tool: Option<Tool>,
    target: Option<PhotoTexture>,
    /// Tiles being made on another thread for a large photo (the one shown until they come).
    target_coming: Option<(Arc<Photo>, crossbeam_channel::Receiver<PhotoTexture>)>,
    overlay: Option<TextureHandle>,
    /// The mask at full resolution on the GPU, drawn by a shader (when the app renders with
    /// wgpu and the adapter holds the mask; else the CPU `overlay`).
    gpu_mask: Option<MaskOverlay>,
    /// Document revision the overlay shows, of which photo, and a region still to upload.
    overlay_revision: Option<u64>,
    overlay_of: Weak<Photo>,
    pending: Option<PixelRect>,
    before: Option<PhotoTexture>,
    checker: Option<TextureHandle>,
    /// The source tint of the result shown, and whose it is.
    tint: Option<(Arc<Sources>, TextureHandle)>,
    last_paint: Option<[f32; 2]>,
    edge: Option<EdgeDrag>,
    selection: Option<Selection>,
    /// Where the before/after divider is, as a share of the canvas's width.
    pub split_at: f32,
    /// The canvas area of the last frame (tests and fit buttons use it).
    pub area: Rect,
}

impl Default for Canvas {
    fn default() -> Self {
        Canvas {
            view: View::default(),
            tool: Some(Tool::Brush),
            target: None,
            target_coming: None,
            overlay: None,
            gpu_mask: None,
            overlay_revision: None,
            overlay_of: Weak::new(),
            pending: None,
            before: None,
            checker: None,
            tint: None,
            last_paint: None,
            selection: None,
            split_at: 0.5,
            edge: None,
            area: Rect::NOTHING,
        }
    }
}

impl Canvas {
    /// Whether the photo on screen is the document's (a camera photo's tiles are made on
    /// another thread: until they come, the previous photo is shown).
    pub fn shows_target_of(&self, doc: &Document) -> bool {
        self.target.as_ref().is_some_and(|t| Arc::ptr_eq(&t.photo, &doc.target))
    }

    /// Draw the mask with `mask_overlay`'s shader on egui_wgpu's renderer `rs`.
    pub fn use_gpu(&mut self, rs: &eframe::egui_wgpu::RenderState) {
        self.gpu_mask = Some(MaskOverlay::new(rs, MASK_TINT_COLOUR));
        self.overlay_revision = None;
    }

    /// Whether the mask is drawn by the GPU overlay (else the CPU one), and the bytes that
    /// overlay has written (for tests).
    pub fn gpu_mask_bytes(&self) -> Option<u64> {
        self.gpu_mask.as_ref().filter(|_| self.overlay.is_none()).map(|g| g.bytes_written())
    }

    fn sync_textures(&mut self, ctx: &egui::Context, doc: &Document) {
        let stale = self.target.as_ref().is_none_or(|t| !Arc::ptr_eq(&t.photo, &doc.target));
        if stale {
            self.refresh_target(ctx, doc);
        }
        // Another photo (a new document starts its revisions again): the whole mask.
        if self.overlay_of.as_ptr() != Arc::as_ptr(&doc.target) {
            self.overlay_of = Arc::downgrade(&doc.target);
            self.overlay_revision = None;
            self.pending = None;
        }
        if let Some(gpu) = self.gpu_mask.as_mut().filter(|g| g.fits(doc.mask.width, doc.mask.height)) {
            // Strokes since the last frame (when the overlay was current before them), else all.
            let changed = if self.overlay_revision == Some(doc.revision) { self.pending.take() } else { None };
            if changed.is_some() || self.overlay_revision != Some(doc.revision) {
                gpu.update(&doc.mask, changed);
            }
            self.pending = None;
            self.overlay = None;
            self.overlay_revision = Some(doc.revision);
        } else {
            self.sync_cpu_overlay(ctx, doc);
        }
        if self.checker.is_none() {
            let (a, b) = (Color32::from_gray(150), Color32::from_gray(110));
            let img = egui::ColorImage::new([2, 2], vec![a, b, b, a]);
            let opts = TextureOptions { wrap_mode: egui::TextureWrapMode::Repeat, ..TextureOptions::NEAREST };
            self.checker = Some(ctx.load_texture("checker", img, opts));
        }
    }

    /// The CPU overlay (no wgpu): an RGBA texture of at most `MAX_TEXTURE` on a side.
    fn sync_cpu_overlay(&mut self, ctx: &egui::Context, doc: &Document) {
        let k = divisor(doc.target.width(), doc.target.height());
        let full = PixelRect { x0: 0, y0: 0, x1: doc.mask.width, y1: doc.mask.height };
        let full_size = [doc.mask.width.div_ceil(k), doc.mask.height.div_ceil(k)];
        match (&mut self.overlay, self.pending.take()) {
            // Painting on a full-size overlay: upload only the changed rectangle.
            (Some(tex), Some(rect)) if self.overlay_revision.is_some() && tex.size() == full_size => {
                let (pos, img) = overlay_image(doc, rect, k);
                tex.set_partial(pos, img, TextureOptions::NEAREST);
                self.overlay_revision = Some(doc.revision);
            }
            // A change the texture cannot take in part (the 1×1 stand-in of an empty mask, the
            // first stroke after opening, a fill or Clear): make the whole overlay below.
            (_, Some(_)) => self.overlay_revision = None,
            _ => {}
        }
        if self.overlay.is_none() || self.overlay_revision != Some(doc.revision) {
            // An empty mask (after every fill) needs no full-size texture: a transparent pixel
            // (the first stroke then makes the full one).
            let (_, img) = if doc.mask.is_empty() {
                ([0, 0], egui::ColorImage::new([1, 1], vec![Color32::TRANSPARENT]))
            } else {
                overlay_image(doc, full, k)
            };
            self.overlay = Some(ctx.load_texture("mask", img, TextureOptions::NEAREST));
            self.overlay_revision = Some(doc.revision);
        }
    }

    /// Make the target's tiles: at once for a small photo; on another thread for a camera
    /// photo (converting and uploading 48 MP took 0.6–0.9 s, which would freeze the window),
    /// showing the previous texture until they arrive.
    fn refresh_target(&mut self, ctx: &egui::Context, doc: &Document) {
        /// Below this many pixels the tiles are made within the frame.
        const AT_ONCE: usize = 1 << 20;
        if doc.target.width() * doc.target.height() <= AT_ONCE {
            self.target = Some(PhotoTexture::new(ctx, "target", &doc.target, false));
            self.target_coming = None;
            self.overlay = None;
            return;
        }
        match &self.target_coming {
            Some((photo, rx)) if Arc::ptr_eq(photo, &doc.target) => {
                if let Ok(t) = rx.try_recv() {
                    self.target = Some(t);
                    self.target_coming = None;
                    self.overlay = None;
                }
            }
            _ => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let (ctx, photo) = (ctx.clone(), doc.target.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(PhotoTexture::new(&ctx, "target", &photo, true));
                    ctx.request_repaint();
                });
                self.target_coming = Some((doc.target.clone(), rx));
            }
        }
    }

    fn before_texture(&mut self, ctx: &egui::Context, photo: &Arc<Photo>) -> &PhotoTexture {
        if self.before.as_ref().is_none_or(|b| !Arc::ptr_eq(&b.photo, photo)) {
            self.before = Some(PhotoTexture::new(ctx, "before", photo, false));
        }
        self.before.as_ref().expect("set above")
    }

    /// The photo's texture tiles (photo pixel rectangles), for tests.
    pub fn target_tiles(&self) -> Vec<[usize; 4]> {
        self.target.as_ref().map_or(Vec::new(), |t| t.tiles.iter().map(|t| [t.x0, t.y0, t.w, t.h]).collect())
    }

    /// Canvas-pixel rectangle of the target.
    fn target_rect(doc: &Document) -> [f32; 4] {
        let e = doc.extension;
        [e.left as f32, e.top as f32, (e.left + doc.target.width()) as f32, (e.top + doc.target.height()) as f32]
    }

    fn edge_under(&self, area: Rect, doc: &Document, p: Pos2) -> Option<Side> {
        let (cw, ch) = doc.canvas_size();
        let r = Rect::from_min_max(
            self.view.to_screen(area, [0.0, 0.0]),
            self.view.to_screen(area, [cw as f32, ch as f32]),
        );
        let near = 6.0;
        let inside_y = p.y > r.top() - near && p.y < r.bottom() + near;
        let inside_x = p.x > r.left() - near && p.x < r.right() + near;
        if inside_y && (p.x - r.left()).abs() < near {
            Some(Side::Left)
        } else if inside_y && (p.x - r.right()).abs() < near {
            Some(Side::Right)
        } else if inside_x && (p.y - r.top()).abs() < near {
            Some(Side::Top)
        } else if inside_x && (p.y - r.bottom()).abs() < near {
            Some(Side::Bottom)
        } else {
            None
        }
    }

    /// Draw the canvas into the remaining space and handle its input.
    pub fn show(&mut self, ui: &mut egui::Ui, doc: &mut Document, o: Overlay<'_>, brush_radius: &mut f32) {
        let area = ui.available_rect_before_wrap();
        if self.view.fitted && self.area.is_positive() && self.area.size() != area.size() {
            self.view.fit_pending = true;
        }
        self.area = area;
        let response = ui.allocate_rect(area, Sense::click_and_drag());
        if self.view.fit_pending {
            self.view.fit(area, doc.canvas_size());
        }
        if o.split && doc.before_last_fill().is_some() {
            self.drag_divider(ui, doc);
        }
        let space = self.input(ui, &response, doc, o.editable, brush_radius);
        self.draw(ui, &response, doc, &o, *brush_radius, space);
    }

    /// The canvas on screen.
    fn canvas_rect(&self, doc: &Document) -> Rect {
        let (cw, ch) = doc.canvas_size();
        Rect::from_min_max(
            self.view.to_screen(self.area, [0.0, 0.0]),
            self.view.to_screen(self.area, [cw as f32, ch as f32]),
        )
    }

    /// The before/after divider: dragged sideways (it takes the drag from the canvas beneath).
    fn drag_divider(&mut self, ui: &egui::Ui, doc: &Document) {
        let c = self.canvas_rect(doc);
        let x = c.left() + self.split_at * c.width();
        let handle =
            Rect::from_min_max(Pos2::new(x - 6.0, c.top()), Pos2::new(x + 6.0, c.bottom())).intersect(self.area);
        let r = ui.interact(handle, ui.scope_id().with("before-after divider"), Sense::drag());
        // The line follows the pointer (not its deltas: a slow frame may hold the press and
        // the first moves together).
        if r.dragged()
            && c.width() > 0.0
            && let Some(p) = r.interact_pointer_pos()
        {
            self.split_at = ((p.x - c.left()) / c.width()).clamp(0.0, 1.0);
        }
        if r.hovered() || r.dragged() {
            ui.ctx().set_cursor_icon(CursorIcon::ResizeHorizontal);
        }
    }

    /// Zoom and pan (any time), edits and brush size (when editable). Returns whether Space
    /// is held (panning mode).
    fn input(
        &mut self,
        ui: &egui::Ui,
        response: &egui::Response,
        doc: &mut Document,
        editable: bool,
        brush_radius: &mut f32,
    ) -> bool {
        let area = self.area;
        let ctx = ui.ctx().clone();
        let (scroll, zoom_delta, space, pointer) = ui
            .input(|i| (i.smooth_scroll_delta.y, i.zoom_delta(), i.key_down(egui::Key::Space), i.pointer.hover_pos()));
        // Only when nothing covers the canvas there: the wheel over a dialog scrolls the dialog.
        if let Some(p) = pointer.filter(|p| area.contains(*p) && response.contains_pointer()) {
            let factor = if zoom_delta != 1.0 { zoom_delta } else { (scroll * 0.002).exp() };
            if factor != 1.0 {
                self.view.zoom_at(area, p, factor);
            }
        }
        let panning = response.dragged_by(egui::PointerButton::Middle)
            || (space && response.dragged_by(egui::PointerButton::Primary));
        if panning {
            self.view.offset += response.drag_delta();
            self.view.fitted = false;
            ctx.set_cursor_icon(CursorIcon::Grabbing);
        } else if space && response.hovered() {
            ctx.set_cursor_icon(CursorIcon::Grab);
        }

        if editable && !panning {
            self.edit(response, area, doc, *brush_radius, &ctx);
        } else {
            self.finish_gestures(doc);
        }
        if response.hovered() && editable {
            let (shift, open, close) = ui.input(|i| {
                (i.modifiers.shift, i.key_pressed(egui::Key::OpenBracket), i.key_pressed(egui::Key::CloseBracket))
            });
            let step = if shift { 1.0 } else { (*brush_radius * 0.15).max(1.0) };
            // Whole pixels: the size field shows what the brush is.
            if open {
                *brush_radius = (*brush_radius - step).round().max(1.0);
            }
            if close {
                *brush_radius = (*brush_radius + step).round().min(500.0);
            }
        }
        space
    }

    /// The canvas: checkerboard, photo (or the photo before the last fill), preview or mask
    /// overlay, border, edge handles, cursor.
    /// The tint texture of `sources`, made once per result.
    fn tint_texture(&mut self, ctx: &egui::Context, sources: &Arc<Sources>) -> TextureHandle {
        match &self.tint {
            Some((s, tex)) if Arc::ptr_eq(s, sources) => tex.clone(),
            _ => {
                let tex = ctx.load_texture("source tint", tint_image(sources), egui::TextureOptions::NEAREST);
                self.tint = Some((sources.clone(), tex.clone()));
                tex
            }
        }
    }

    fn draw(
        &mut self,
        ui: &egui::Ui,
        response: &egui::Response,
        doc: &Document,
        o: &Overlay<'_>,
        brush_radius: f32,
        space: bool,
    ) {
        let area = self.area;
        let ctx = ui.ctx().clone();
        self.sync_textures(&ctx, doc);
        let painter = ui.painter_at(area);
        painter.rect_filled(area, 0.0, Color32::from_gray(40));
        let (cw, ch) = doc.canvas_size();
        let canvas_rect = Rect::from_min_max(
            self.view.to_screen(area, [0.0, 0.0]),
            self.view.to_screen(area, [cw as f32, ch as f32]),
        );
        if let Some(checker) = &self.checker {
            // 8-point squares whatever the zoom.
            let uv = Rect::from_min_size(Pos2::ZERO, canvas_rect.size() / 16.0);
            painter.image(checker.id(), canvas_rect, uv, Color32::WHITE);
        }
        let [tx0, ty0, tx1, ty1] = Self::target_rect(doc);
        let target_screen =
            Rect::from_min_max(self.view.to_screen(area, [tx0, ty0]), self.view.to_screen(area, [tx1, ty1]));
        let full_uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
        let before = if o.show_before { doc.before_last_fill() } else { None };
        if let Some((photo, ext)) = before {
            // The earlier photo sat at `ext` on its own canvas, which is this canvas.
            let view = self.view;
            self.before_texture(&ctx, &photo).paint(&painter, &view, area, ext.left as f32, ext.top as f32);
            label(&painter, area, "before (release \\ to see after)");
        } else if let Some(t) = &self.target {
            t.paint(&painter, &self.view, area, tx0, ty0);
            if let Some((tex, step, total)) = o.preview {
                painter.image(tex.id(), canvas_rect, full_uv, Color32::WHITE);
                for n in o.native {
                    let [x, y] = n.pos.map(|v| v as f32);
                    let [w, h] = n.tex.size().map(|v| v as f32);
                    let r = Rect::from_min_max(
                        self.view.to_screen(area, [x, y]),
                        self.view.to_screen(area, [x + w, y + h]),
                    );
                    painter.image(n.tex.id(), r, full_uv, Color32::WHITE);
                }
                let what = match o.native.last() {
                    Some(n) => format!("full-resolution detail: {} of {} rows", n.rows_done, n.rows),
                    None => format!("denoising step {step} of {total}"),
                };
                // Once the job is over the preview only waits for the result's texture.
                if !o.editable {
                    label(&painter, area, &what);
                }
            } else if let Some((photo, ext)) = o.split.then(|| doc.before_last_fill()).flatten() {
                // Before on the left of the divider, after (already drawn) on the right.
                let x = canvas_rect.left() + self.split_at * canvas_rect.width();
                let left = Rect::from_min_max(canvas_rect.min, Pos2::new(x, canvas_rect.bottom())).intersect(area);
                let view = self.view;
                let clipped = painter.with_clip_rect(left);
                self.before_texture(&ctx, &photo).paint(&clipped, &view, area, ext.left as f32, ext.top as f32);
                let line = [
                    Pos2::new(x, canvas_rect.top().max(area.top())),
                    Pos2::new(x, canvas_rect.bottom().min(area.bottom())),
                ];
                painter.line_segment(line, Stroke::new(3.0, Color32::BLACK));
                painter.line_segment(line, Stroke::new(1.0, Color32::WHITE));
                label(&painter, area, "before | after (drag the line)");
            } else if let Some(gpu) = self.gpu_mask.as_ref().filter(|_| self.overlay.is_none()) {
                let shown = target_screen.intersect(area);
                if shown.is_positive()
                    && let Some(cb) = gpu.callback(shown, target_screen.min, self.view.zoom)
                {
                    painter.add(cb);
                }
            } else if let Some(ov) = &self.overlay {
                painter.image(ov.id(), target_screen, full_uv, Color32::WHITE);
            }
            if let Some((sources, names)) = o.tint.filter(|_| o.preview.is_none() && !o.split) {
                let tex = self.tint_texture(&ctx, sources);
                painter.image(tex.id(), canvas_rect, full_uv, Color32::WHITE);
                legend(&painter, area, &sources.legend(names));
            }
        }
        painter.rect_stroke(canvas_rect, 0.0, Stroke::new(1.0, Color32::from_gray(200)), StrokeKind::Outside);
        if let Some(sel) = &self.selection {
            let pts: Vec<Pos2> = sel.outline().iter().map(|&p| self.view.to_screen(area, p)).collect();
            let colour = if sel.subtract { Color32::LIGHT_BLUE } else { Color32::WHITE };
            painter.add(egui::Shape::closed_line(pts.clone(), Stroke::new(2.5, Color32::BLACK)));
            painter.add(egui::Shape::closed_line(pts, Stroke::new(1.0, colour)));
        }
        if o.editable {
            // Edge handles at the middle of each side.
            let hs = Vec2::splat(8.0);
            for c in [
                canvas_rect.left_center(),
                canvas_rect.right_center(),
                canvas_rect.center_top(),
                canvas_rect.center_bottom(),
            ] {
                painter.rect_filled(Rect::from_center_size(c, hs), 1.0, Color32::WHITE);
                painter.rect_stroke(
                    Rect::from_center_size(c, hs),
                    1.0,
                    Stroke::new(1.0, Color32::BLACK),
                    StrokeKind::Inside,
                );
            }
        }
        if let Some(p) = response.hover_pos() {
            if let Some(side) = self
                .edge
                .as_ref()
                .map(|e| e.side)
                .or_else(|| o.editable.then(|| self.edge_under(area, doc, p)).flatten())
            {
                ctx.set_cursor_icon(match side {
                    Side::Left | Side::Right => CursorIcon::ResizeHorizontal,
                    Side::Top | Side::Bottom => CursorIcon::ResizeVertical,
                });
            } else if o.editable && self.tool.is_some_and(|t| !t.paints()) && !space {
                ctx.set_cursor_icon(CursorIcon::Crosshair);
            } else if o.editable && self.tool.is_some() && !space {
                let colour = if self.tool == Some(Tool::Eraser) { Color32::LIGHT_BLUE } else { Color32::WHITE };
                let r = brush_radius * self.view.zoom;
                painter.circle_stroke(p, r.max(3.0), Stroke::new(1.5, Color32::BLACK));
                painter.circle_stroke(p, r.max(3.0), Stroke::new(1.0, colour));
                if r < 6.0 {
                    // A brush a few screen pixels wide (a camera photo seen whole): a crosshair
                    // shows where it is.
                    for d in [Vec2::new(8.0, 0.0), Vec2::new(0.0, 8.0)] {
                        painter.line_segment([p - d, p - d * 0.5], Stroke::new(1.0, colour));
                        painter.line_segment([p + d * 0.5, p + d], Stroke::new(1.0, colour));
                    }
                }
            }
        }
    }

    fn finish_gestures(&mut self, doc: &mut Document) {
        if self.last_paint.take().is_some() || self.edge.take().is_some() {
            doc.end_gesture();
        }
    }

    fn edit(&mut self, response: &egui::Response, area: Rect, doc: &mut Document, radius: f32, ctx: &egui::Context) {
        let primary = response.dragged_by(egui::PointerButton::Primary);
        let pos = response.interact_pointer_pos();
        if response.drag_started_by(egui::PointerButton::Primary)
            && let Some(p) = pos
        {
            // The press position, not the position after the drag threshold.
            let press = ctx.input(|i| i.pointer.press_origin()).unwrap_or(p);
            if let Some(side) = self.edge_under(area, doc, press) {
                doc.begin_gesture();
                self.edge = Some(EdgeDrag { side, start: doc.extension, pointer: press });
            } else if let Some(tool) = self.tool.filter(|t| !t.paints()) {
                let subtract = ctx.input(|i| i.modifiers.alt);
                let (a, b) = (self.view.to_canvas(area, press), self.view.to_canvas(area, p));
                self.selection = Some(Selection { tool, points: vec![a, b], subtract });
            } else if let Some(tool) = self.tool {
                doc.begin_gesture();
                let a = self.view.to_canvas(area, press);
                let b = self.view.to_canvas(area, p);
                self.paint(doc, a, b, radius, tool);
                self.last_paint = Some(b);
            }
        } else if primary && let Some(p) = pos {
            if let Some(e) = &self.edge {
                let d = (p - e.pointer) / self.view.zoom;
                let grow = |v: usize, by: f32| (v as f32 + by).round().clamp(0.0, 20_000.0) as usize;
                let mut ext = e.start;
                match e.side {
                    Side::Left => ext.left = grow(e.start.left, -d.x),
                    Side::Right => ext.right = grow(e.start.right, d.x),
                    Side::Top => ext.top = grow(e.start.top, -d.y),
                    Side::Bottom => ext.bottom = grow(e.start.bottom, d.y),
                }
                // Keep the photo where it is on screen when the canvas grows left or up.
                let shift =
                    Vec2::new(ext.left as f32 - doc.extension.left as f32, ext.top as f32 - doc.extension.top as f32);
                self.view.offset -= shift * self.view.zoom;
                // The mask is as it was: an overlay that was current stays so (no upload per
                // frame of the drag).
                let current = self.overlay_revision == Some(doc.revision);
                doc.set_extension(ext);
                if current {
                    self.overlay_revision = Some(doc.revision);
                }
            } else if let Some(sel) = &mut self.selection {
                let b = self.view.to_canvas(area, p);
                match sel.tool {
                    Tool::Rectangle => sel.points[1] = b,
                    // Every pointer position of the frame (a slow frame must not cut corners),
                    // one point per two screen pixels.
                    _ => {
                        let moves: Vec<Pos2> = ctx.input(|i| {
                            i.events
                                .iter()
                                .filter_map(|e| if let egui::Event::PointerMoved(m) = e { Some(*m) } else { None })
                                .collect()
                        });
                        for m in moves.into_iter().chain(std::iter::once(p)) {
                            let b = self.view.to_canvas(area, m);
                            let last = sel.points[sel.points.len() - 1];
                            if (b[0] - last[0]).hypot(b[1] - last[1]) * self.view.zoom >= 2.0 {
                                sel.points.push(b);
                            }
                        }
                    }
                }
            } else if let (Some(last), Some(tool)) = (self.last_paint, self.tool) {
                let b = self.view.to_canvas(area, p);
                self.paint(doc, last, b, radius, tool);
                self.last_paint = Some(b);
            }
        } else if response.clicked_by(egui::PointerButton::Primary)
            && let (Some(p), Some(tool)) = (pos, self.tool.filter(|t| t.paints()))
        {
            doc.begin_gesture();
            let a = self.view.to_canvas(area, p);
            self.paint(doc, a, a, radius, tool);
            doc.end_gesture();
        }
        if !primary && !response.drag_started() {
            // A selection ends when the button is released: one undo step.
            if let Some(sel) = self.selection.take() {
                doc.begin_gesture();
                let shown = self.overlay_revision == Some(doc.revision);
                let rect = doc.select(&sel.outline(), !sel.subtract);
                self.mask_changed(shown, rect, doc);
                doc.end_gesture();
            }
            self.finish_gestures(doc);
        }
    }

    fn paint(&mut self, doc: &mut Document, a: [f32; 2], b: [f32; 2], radius: f32, tool: Tool) {
        let shown = self.overlay_revision == Some(doc.revision);
        let rect = doc.paint(a, b, radius, tool == Tool::Brush);
        self.mask_changed(shown, rect, doc);
    }

    /// The mask changed within `rect` (mask pixels) only: an overlay that was up to date
    /// (`shown`) uploads that region alone.
    fn mask_changed(&mut self, shown: bool, rect: Option<PixelRect>, doc: &Document) {
        if let (true, Some(r)) = (shown, rect) {
            self.pending = Some(self.pending.map_or(r, |p| p.union(r)));
            self.overlay_revision = Some(doc.revision);
        }
    }
}

/// The source tint's colours and what each stands for, at the canvas's bottom left.
fn legend(painter: &egui::Painter, area: Rect, rows: &[([u8; 3], String)]) {
    let font = egui::FontId::proportional(14.0);
    let line = 20.0;
    let mut pos = area.left_bottom() + Vec2::new(10.0, -10.0 - line * rows.len() as f32);
    let width = rows
        .iter()
        .map(|(_, text)| painter.layout_no_wrap(text.clone(), font.clone(), Color32::WHITE).size().x)
        .fold(0.0f32, f32::max);
    let bg = Rect::from_min_size(pos, Vec2::new(width + 26.0, line * rows.len() as f32)).expand(4.0);
    painter.rect_filled(bg, 3.0, Color32::from_black_alpha(170));
    for ([r, g, b], text) in rows {
        painter.rect_filled(
            Rect::from_min_size(pos + Vec2::new(0.0, 3.0), Vec2::splat(14.0)),
            2.0,
            Color32::from_rgb(*r, *g, *b),
        );
        painter.text(pos + Vec2::new(22.0, 0.0), egui::Align2::LEFT_TOP, text, font.clone(), Color32::WHITE);
        pos.y += line;
    }
}

/// The source tint as a texture image: each filled pixel in its source's colour, half
/// transparent; known pixels clear.
pub fn tint_image(sources: &Sources) -> egui::ColorImage {
    let (w, h) = (sources.width.max(1), sources.height.max(1));
    let mut rgba = vec![0u8; 4 * w * h];
    for (i, &s) in sources.map.iter().enumerate().take(w * h) {
        if s != crate::engine::sources::KNOWN {
            let [r, g, b] = crate::engine::sources::colour(s);
            rgba[4 * i..4 * i + 4].copy_from_slice(&[r, g, b, 140]);
        }
    }
    egui::ColorImage::from_rgba_unmultiplied([w, h], &rgba)
}

fn label(painter: &egui::Painter, area: Rect, text: &str) {
    let pos = area.left_top() + Vec2::new(10.0, 10.0);
    let galley = painter.layout_no_wrap(text.to_owned(), egui::FontId::proportional(15.0), Color32::WHITE);
    let bg = Rect::from_min_size(pos, galley.size()).expand(4.0);
    painter.rect_filled(bg, 3.0, Color32::from_black_alpha(170));
    painter.galley(pos, galley, Color32::WHITE);
}

/// A thumbnail of `img` (reference and candidate buttons) at most `side` pixels on a side.
pub fn thumbnail(img: &image::DynamicImage, side: u32) -> egui::ColorImage {
    let t = img.thumbnail(side, side).to_rgba8();
    egui::ColorImage::from_rgba_unmultiplied([t.width() as usize, t.height() as usize], t.as_raw())
}

/// The preview as a texture image over the job's canvas: the x0 estimate inside the fill
/// region, transparent elsewhere (the full-resolution photo shows through).
pub fn preview_image(preview: &crate::scene::RgbF, fill: &crate::scene::Mask) -> egui::ColorImage {
    let (w, h) = (preview.width, preview.height);
    let inside = |x: usize, y: usize| {
        let fx = ((x as f32 + 0.5) * fill.width as f32 / w as f32) as usize;
        let fy = ((y as f32 + 0.5) * fill.height as f32 / h as f32) as usize;
        fill.get(fx.min(fill.width - 1), fy.min(fill.height - 1)) >= 0.5
    };
    let mut rgba = vec![0u8; w * h * 4];
    for y in 0..h {
        for x in 0..w {
            let v = preview.get(x, y);
            let o = 4 * (y * w + x);
            for c in 0..3 {
                rgba[o + c] = (v[c].clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            }
            // Opaque over the fill region and one preview pixel around it: texture filtering
            // fades the edge out over known pixels (which the preview shows too), not over
            // what the photo has in its hole (often black).
            let near = (y.saturating_sub(1)..(y + 2).min(h))
                .any(|yy| (x.saturating_sub(1)..(x + 2).min(w)).any(|xx| inside(xx, yy)));
            if near {
                rgba[o + 3] = 255;
            }
        }
    }
    egui::ColorImage::from_rgba_unmultiplied([w, h], &rgba)
}

/// A finished strip of the native-resolution fill as a texture at canvas position `pos`.
pub struct NativeTexture {
    pub pos: [usize; 2],
    pub tex: TextureHandle,
    /// Of the native crop's rows, done with this strip.
    pub rows_done: usize,
    pub rows: usize,
}

/// A strip of the native-resolution fill as texture images of at most `TILE` columns each, and
/// their canvas positions: opaque in the fill region, transparent elsewhere (the feather band
/// shows the photo until the composite arrives).
pub fn native_tile_images(
    tile: &crate::engine::detail::NativeTile,
    fill: &crate::scene::Mask,
) -> Vec<([usize; 2], egui::ColorImage)> {
    let (w, h) = (tile.rgb.width, tile.rgb.height);
    (0..w)
        .step_by(TILE)
        .map(|c0| {
            let cw = TILE.min(w - c0);
            let mut rgba = vec![0u8; cw * h * 4];
            for y in 0..h {
                for x in 0..cw {
                    let o = 4 * (y * cw + x);
                    let v = tile.rgb.get(c0 + x, y);
                    for c in 0..3 {
                        rgba[o + c] = (v[c].clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
                    }
                    if fill.get(tile.x0 + c0 + x, tile.y0 + y) >= 0.5 {
                        rgba[o + 3] = 255;
                    }
                }
            }
            ([tile.x0 + c0, tile.y0], egui::ColorImage::from_rgba_unmultiplied([cw, h], &rgba))
        })
        .collect()
}

/// The part of a preview image that covers the fill region (its bounding box with a margin),
/// and where it sits. `fill_box` is the fill region's bounding box on a `canvas`-sized canvas
/// (`Mask::bbox`, computed once per job: a camera photo's mask is too large to scan per frame).
pub fn fill_region_of(
    img: &egui::ColorImage,
    fill_box: Option<(usize, usize, usize, usize)>,
    canvas: (usize, usize),
) -> ([usize; 2], egui::ColorImage) {
    let [w, h] = img.size;
    let Some((x0, y0, x1, y1)) = fill_box else {
        return ([0, 0], img.clone());
    };
    let (fw, fh) = canvas;
    // Canvas-pixel box (end exclusive) → preview pixels, with a margin covering the one-pixel
    // opaque ring of `preview_image` and filtering.
    let (px0, py0) = ((x0 * w / fw).saturating_sub(2), (y0 * h / fh).saturating_sub(2));
    let (px1, py1) = (((x1 * w).div_ceil(fw) + 2).min(w), ((y1 * h).div_ceil(fh) + 2).min(h));
    let (cw, ch) = (px1 - px0, py1 - py0);
    let mut pixels = Vec::with_capacity(cw * ch);
    for y in py0..py1 {
        pixels.extend_from_slice(&img.pixels[y * w + px0..y * w + px1]);
    }
    ([px0, py0], egui::ColorImage::new([cw, ch], pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_maps_both_ways_and_zooms_about_the_anchor() {
        let area = Rect::from_min_size(Pos2::new(100.0, 50.0), Vec2::new(400.0, 300.0));
        let mut v = View::default();
        v.fit(area, (800, 600));
        let p = v.to_screen(area, [400.0, 300.0]);
        assert!((p - area.center()).length() < 1e-3, "fit centres the canvas");
        let anchor = Pos2::new(180.0, 120.0);
        let under = v.to_canvas(area, anchor);
        v.zoom_at(area, anchor, 3.0);
        let after = v.to_canvas(area, anchor);
        assert!((under[0] - after[0]).abs() < 1e-3 && (under[1] - after[1]).abs() < 1e-3);
        assert!(!v.fitted, "a zoom leaves the fitted view");
        // 100 % keeps the point under the pointer to within half a pixel; without a pointer on
        // the canvas, the centre. The canvas's corner lands on a whole physical pixel.
        let on_whole_pixels = |v: &View, ppp: f32| {
            let c = (v.to_screen(area, [0.0, 0.0]).to_vec2()) * ppp;
            (c.x - c.x.round()).abs() < 1e-3 && (c.y - c.y.round()).abs() < 1e-3
        };
        v.zoom_at(area, Pos2::new(173.3, 91.7), 1.37);
        let anchor = Pos2::new(180.4, 120.6);
        let under = v.to_canvas(area, anchor);
        v.actual_pixels(area, Some(anchor), 1.0);
        assert_eq!(v.zoom, 1.0);
        assert!(on_whole_pixels(&v, 1.0), "{:?}", v.offset);
        let after = v.to_canvas(area, anchor);
        assert!((under[0] - after[0]).abs() <= 0.5 && (under[1] - after[1]).abs() <= 0.5);
        let centre = v.to_canvas(area, area.center());
        v.actual_pixels(area, Some(Pos2::new(0.0, 0.0)), 1.5);
        assert_eq!(v.zoom, 1.0 / 1.5);
        assert!(on_whole_pixels(&v, 1.5), "{:?}", v.offset);
        let after = v.to_canvas(area, area.center());
        assert!((centre[0] - after[0]).abs() <= 0.5 && (centre[1] - after[1]).abs() <= 0.5);
    }

    // --- the mask overlay on screen (kittest, rendered with wgpu on lavapipe) ---

    use eframe::egui_wgpu;
    use egui_kittest::Harness;

    struct Shown {
        canvas: Canvas,
        doc: Document,
        radius: f32,
    }

    /// egui_wgpu's renderer as kittest makes it, shared with the canvas's GPU overlay.
    fn render_state() -> egui_wgpu::RenderState {
        egui_kittest::wgpu::create_render_state(
            egui_kittest::wgpu::default_wgpu_setup(),
            egui_wgpu::RendererOptions::PREDICTABLE,
        )
    }

    /// A fresh grey `w` × `h` photo on a canvas (with the GPU overlay when `gpu`), its tiles
    /// on screen, at one pixel per point.
    fn shown(w: u32, h: u32, gpu: bool) -> Harness<'static, Shown> {
        shown_at(w, h, gpu, 1.0)
    }

    /// The same at `ppp` physical pixels per point.
    fn shown_at(w: u32, h: u32, gpu: bool, ppp: f32) -> Harness<'static, Shown> {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([128, 128, 128])));
        let doc = Document::new(Photo::from_image(std::path::PathBuf::from("/tmp/grey.png"), img, None));
        let mut canvas = Canvas::default();
        let rs = render_state();
        if gpu {
            canvas.use_gpu(&rs);
        }
        let builder = Harness::builder()
            .with_size([480.0, 360.0])
            .with_pixels_per_point(ppp)
            .renderer(egui_kittest::wgpu::WgpuTestRenderer::from_render_state(rs));
        let mut h = builder.build_ui_state(
            |ui, s: &mut Shown| {
                let o = Overlay {
                    editable: true,
                    preview: None,
                    native: &[],
                    show_before: false,
                    split: false,
                    tint: None,
                };
                s.canvas.show(ui, &mut s.doc, o, &mut s.radius);
            },
            Shown { canvas, doc, radius: 30.0 },
        );
        let t0 = std::time::Instant::now();
        while !h.state().canvas.shows_target_of(&h.state().doc) {
            assert!(t0.elapsed().as_secs() < 120, "the photo's tiles never came");
            std::thread::sleep(std::time::Duration::from_millis(10));
            h.step();
        }
        h
    }

    /// Show photo pixel `p` at the canvas area's centre at 100 % (one photo pixel per physical
    /// pixel, on whole physical pixels).
    fn at_100(h: &mut Harness<'_, Shown>, p: [f32; 2]) {
        let (area, ppp) = (h.state().canvas.area, h.ctx.pixels_per_point());
        let zoom = 1.0 / ppp;
        let offset = ((area.size() * 0.5 - Vec2::new(p[0], p[1]) * zoom) * ppp).round() / ppp;
        h.state_mut().canvas.view = View { zoom, offset, fit_pending: false, fitted: false };
        h.run_steps(2);
    }

    /// One brush stroke dragged on screen from `a` to `b`, then the pointer leaves (its brush
    /// outline would cover the edge).
    fn stroke(h: &mut Harness<'_, Shown>, a: Pos2, b: Pos2) {
        h.drag_at(a);
        h.step();
        for i in 1..=4 {
            h.hover_at(a + (b - a) * (i as f32 / 4.0));
            h.step();
        }
        h.drop_at(b);
        h.step();
        h.input_mut().events.push(egui::Event::PointerGone);
        h.run_steps(2);
    }

    /// The tint over the grey photo: red well above green.
    fn tinted(p: &image::Rgba<u8>) -> bool {
        i32::from(p[0]) - i32::from(p[1]) > 20
    }

    /// Physical pixels within `r` of `centre` (a screen point) whose tint disagrees with the
    /// mask pixel under their centre, and how many are tinted.
    fn disagreements(h: &mut Harness<'_, Shown>, centre: Pos2, r: i32) -> (usize, usize) {
        let img = h.render().expect("the harness renders");
        let (s, ppp) = (h.state(), h.ctx.pixels_per_point());
        let (mut wrong, mut painted) = (0, 0);
        let (x0, y0) = ((centre.x * ppp) as i32, (centre.y * ppp) as i32);
        for y in y0 - r..y0 + r {
            for x in x0 - r..x0 + r {
                let centre = Pos2::new(x as f32 + 0.5, y as f32 + 0.5) / ppp;
                let [cx, cy] = s.canvas.view.to_canvas(s.canvas.area, centre);
                let on_mask = s.doc.mask.get(cx.floor() as usize, cy.floor() as usize);
                let t = tinted(img.get_pixel(x as u32, y as u32));
                wrong += usize::from(t != on_mask);
                painted += usize::from(t);
            }
        }
        (wrong, painted)
    }

    /// Issue 28: at 100 % the mask's edge on a photo larger than 2048 px is the brush's own,
    /// pixel for pixel (the CPU overlay, capped at 2048 px, showed 2-pixel blocks here) — also
    /// where the stroke crosses the corner of four of the GPU overlay's tiles.
    #[test]
    fn at_100_percent_the_mask_edge_is_exact_per_photo_pixel_on_a_large_photo() {
        let mut h = shown(3000, 2000, true);
        at_100(&mut h, [1024.0, 1024.0]);
        let c = h.state().canvas.area.center();
        stroke(&mut h, c - Vec2::new(17.0, 9.0), c + Vec2::new(13.0, 5.0));
        assert!(h.state().doc.mask.count() > 1000, "the stroke painted");
        assert!(h.state().canvas.gpu_mask_bytes().is_some(), "drawn by the GPU overlay");
        let (wrong, painted) = disagreements(&mut h, c, 70);
        assert!(painted > 1000, "the stroke is on screen ({painted} pixels tinted)");
        assert_eq!(wrong, 0, "screen pixels whose tint is not the mask's under them");
    }

    /// On a high-DPI screen 100 % is one photo pixel per physical pixel, and so is the mask.
    #[test]
    fn at_100_percent_on_a_high_dpi_screen_the_mask_edge_is_exact_per_physical_pixel() {
        let mut h = shown_at(2500, 1500, true, 2.0);
        at_100(&mut h, [1200.0, 700.0]);
        let c = h.state().canvas.area.center();
        stroke(&mut h, c - Vec2::new(8.0, 4.0), c + Vec2::new(6.0, 3.0));
        let (wrong, painted) = disagreements(&mut h, c, 70);
        assert!(painted > 1000, "the stroke is on screen ({painted} pixels tinted)");
        assert_eq!(wrong, 0, "physical pixels whose tint is not the mask's under them");
    }

    /// The first stroke on an empty mask shows at once (issue 28, item 1), writes its rectangle
    /// only, and undo takes it off the screen.
    #[test]
    fn the_first_stroke_on_an_empty_mask_shows_and_undo_removes_it() {
        let mut h = shown(3000, 2000, true);
        at_100(&mut h, [700.0, 500.0]);
        let c = h.state().canvas.area.center();
        assert_eq!(disagreements(&mut h, c, 80), (0, 0), "nothing painted yet");
        assert_eq!(h.state().canvas.gpu_mask_bytes(), Some(0), "an empty mask uploads nothing");
        stroke(&mut h, c, c + Vec2::new(20.0, 0.0));
        let (wrong, painted) = disagreements(&mut h, c, 80);
        assert!(painted > 2000 && wrong == 0, "{painted} tinted, {wrong} wrong");
        let bytes = h.state().canvas.gpu_mask_bytes().expect("GPU overlay");
        assert!(bytes > 0 && bytes < 200 * 200, "the stroke's rectangle only: {bytes} bytes");
        assert!(h.state_mut().doc.undo());
        h.run_steps(2);
        assert_eq!(disagreements(&mut h, c, 80), (0, 0), "undo leaves no tint");
    }

    /// A rectangle selection, like a stroke, writes its own rectangle and shows at once.
    #[test]
    fn a_rectangle_selection_uploads_only_its_rectangle() {
        let mut h = shown(3000, 2000, true);
        h.state_mut().canvas.tool = Some(Tool::Rectangle);
        at_100(&mut h, [2500.0, 1500.0]);
        let c = h.state().canvas.area.center();
        stroke(&mut h, c - Vec2::new(20.0, 15.0), c + Vec2::new(20.0, 15.0));
        let painted = h.state().doc.mask.count();
        assert!((1000..=1400).contains(&painted), "{painted} pixels selected");
        let bytes = h.state().canvas.gpu_mask_bytes().expect("GPU overlay");
        assert!(bytes >= painted as u64 && bytes <= 42 * 32, "{bytes} bytes for {painted} pixels");
        let (wrong, tinted) = disagreements(&mut h, c, 40);
        assert!(wrong == 0 && tinted == painted, "{tinted} tinted, {wrong} wrong");
    }

    /// Fitted to the window the GPU overlay looks as the CPU one did: the same colour inside
    /// the mask, about the same tinted area.
    #[test]
    fn fitted_to_the_window_the_gpu_overlay_matches_the_cpu_overlay() {
        let look = |gpu: bool| {
            let mut h = shown(3000, 2000, gpu);
            h.state_mut().doc.select(&[[600.0, 500.0], [2100.0, 500.0], [2100.0, 1500.0], [600.0, 1500.0]], true);
            h.state_mut().canvas.view.fit_pending = true;
            h.run_steps(2);
            let img = h.render().expect("the harness renders");
            let s = h.state();
            let inside = s.canvas.view.to_screen(s.canvas.area, [1350.0, 1000.0]);
            let count = img.pixels().filter(|p| tinted(p)).count();
            (*img.get_pixel(inside.x as u32, inside.y as u32), count)
        };
        let (gpu, cpu) = (look(true), look(false));
        for c in 0..4 {
            assert!(gpu.0[c].abs_diff(cpu.0[c]) <= 2, "colour inside: GPU {:?}, CPU {:?}", gpu.0, cpu.0);
        }
        let (a, b) = (gpu.1 as f32, cpu.1 as f32);
        assert!((a - b).abs() < 0.03 * b, "tinted pixels: GPU {a}, CPU {b}");
    }

    #[test]
    fn preview_uploads_cover_the_fill_region() {
        let img = egui::ColorImage::new([40, 20], vec![Color32::RED; 800]);
        let mut fill = crate::scene::Mask::new(80, 40, 0.0);
        for y in 10..20 {
            for x in 30..50 {
                fill.set(x, y, 1.0);
            }
        }
        let ([x, y], part) = fill_region_of(&img, fill.bbox(), (fill.width, fill.height));
        // Canvas box 30..50 × 10..20 is preview 15..25 × 5..10; one pixel of margin or more.
        assert!(x <= 14 && y <= 4 && x + part.size[0] >= 26 && y + part.size[1] >= 11, "{x},{y} {:?}", part.size);
        assert!(part.size[0] < 40 && part.size[1] < 20, "smaller than the whole preview");
    }

    #[test]
    fn native_strips_are_cut_to_texture_tiles_opaque_only_in_the_fill_region() {
        let (w, h) = (TILE + 300, 5);
        let rgb = crate::scene::RgbF::from_fn(w, h, |x, _| [x as f32 / w as f32, 0.0, 1.0]);
        let tile =
            crate::engine::detail::NativeTile { x0: 10, y0: 20, rgb: std::sync::Arc::new(rgb), rows_done: 5, rows: 9 };
        let mut fill = crate::scene::Mask::new(w + 20, 40, 0.0);
        fill.set(10 + TILE + 1, 22, 1.0);
        let parts = native_tile_images(&tile, &fill);
        assert_eq!(
            parts.iter().map(|(p, i)| (*p, i.size)).collect::<Vec<_>>(),
            [([10, 20], [TILE, 5]), ([10 + TILE, 20], [300, 5])]
        );
        let second = &parts[1].1;
        assert_eq!(second.pixels[2 * 300 + 1].a(), 255, "the fill region's pixel");
        assert_eq!(second.pixels[2 * 300 + 2].a(), 0, "known pixels stay the photo's");
        assert_eq!(parts[0].1.pixels.iter().filter(|p| p.a() > 0).count(), 0);
    }

    #[test]
    fn preview_is_opaque_only_in_the_fill_region() {
        let img = crate::scene::RgbF::from_fn(8, 2, |_, _| [1.0, 0.0, 0.0]);
        let mut fill = crate::scene::Mask::new(16, 4, 0.0);
        fill.set(15, 3, 1.0);
        let c = preview_image(&img, &fill);
        assert_eq!(c.pixels[0].a(), 0, "far from the fill region: transparent");
        assert_eq!(c.pixels[15], Color32::from_rgb(255, 0, 0), "in it: the preview");
        assert_eq!(c.pixels[14].a(), 255, "one pixel around it too");
        assert_eq!(c.pixels[13].a(), 0);
    }
}
