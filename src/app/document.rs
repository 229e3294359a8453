//! What the user is editing, without any UI: the target photo, the references, the painted
//! mask, the canvas extension, and the undo history. One undo step per gesture: a whole
//! brush stroke, one canvas-edge drag, one accepted fill.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::scene::project::RleMask;
use crate::scene::{Extension, Mask, Photo, Scene};

/// Undo depth. Masks are stored run-length encoded and photos shared, so a step is small
/// except after a fill (one photo each).
const HISTORY: usize = 100;

/// The painted mask at the target's size: 1 = fill. It keeps its painted-pixel count, so that
/// "is there anything to fill" costs nothing on a camera photo (the panels ask every frame),
/// and shares its pixels until written (a job's copy costs nothing on the UI thread).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaintMask {
    pub width: usize,
    pub height: usize,
    data: Arc<Vec<u8>>,
    painted: usize,
}

/// A pixel rectangle [x0, x1) × [y0, y1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelRect {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl PixelRect {
    pub fn union(self, o: PixelRect) -> PixelRect {
        PixelRect { x0: self.x0.min(o.x0), y0: self.y0.min(o.y0), x1: self.x1.max(o.x1), y1: self.y1.max(o.y1) }
    }
}

impl PaintMask {
    pub fn new(width: usize, height: usize) -> PaintMask {
        PaintMask { width, height, data: Arc::new(vec![0; width * height]), painted: 0 }
    }

    fn from_data(width: usize, height: usize, data: Vec<u8>) -> PaintMask {
        let painted = data.iter().filter(|&&v| v != 0).count();
        PaintMask { width, height, data: Arc::new(data), painted }
    }

    pub fn from_mask(m: &Mask) -> PaintMask {
        PaintMask::from_data(m.width, m.height, m.data.iter().map(|&v| u8::from(v >= 0.5)).collect())
    }

    /// One byte per pixel, row-major: 1 = fill.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn to_mask(&self) -> Mask {
        Mask { width: self.width, height: self.height, data: self.data.iter().map(|&v| f32::from(v)).collect() }
    }

    /// Run-length encoded (`RleMask::encode`'s runs), eight pixels at a time through uniform
    /// stretches: every accepted fill and stroke snapshots the mask for undo, and on a camera
    /// photo a pixel-by-pixel pass cost the UI thread tens of milliseconds.
    pub fn rle(&self) -> RleMask {
        let d = &self.data;
        let (mut runs, mut i, mut fill) = (Vec::new(), 0usize, false);
        while i < d.len() {
            let start = i;
            // Whole 8-pixel words of the current value (painted pixels are 1), then pixel by
            // pixel to the change.
            let word = if fill { 0x0101_0101_0101_0101u64 } else { 0 };
            while i + 8 <= d.len() && u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes")) == word {
                i += 8;
            }
            while i < d.len() && (d[i] != 0) == fill {
                i += 1;
            }
            runs.push((i - start) as u64);
            fill = !fill;
        }
        if runs.is_empty() {
            runs.push(0);
        }
        RleMask { width: self.width, height: self.height, runs }
    }

    pub fn from_rle(r: &RleMask) -> std::result::Result<PaintMask, String> {
        Ok(PaintMask::from_data(r.width, r.height, r.decode()?.into_iter().map(u8::from).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.painted == 0
    }

    /// Painted pixels.
    pub fn count(&self) -> usize {
        self.painted
    }

    pub fn get(&self, x: usize, y: usize) -> bool {
        self.data[y * self.width + x] != 0
    }

    /// Paint (or erase) a round brush of `radius` pixels swept from `a` to `b` (pixel
    /// coordinates, pixel centres at +0.5). Returns the rectangle that may have changed, or
    /// None when the stroke misses the image.
    pub fn stroke(&mut self, a: [f32; 2], b: [f32; 2], radius: f32, fill: bool) -> Option<PixelRect> {
        let r = radius.max(0.5);
        let lo = |v: f32| (v - r).floor().max(0.0) as usize;
        let hi = |v: f32, n: usize| ((v + r).ceil().max(0.0) as usize).min(n);
        let rect = PixelRect {
            x0: lo(a[0].min(b[0])),
            y0: lo(a[1].min(b[1])),
            x1: hi(a[0].max(b[0]), self.width),
            y1: hi(a[1].max(b[1]), self.height),
        };
        if rect.x0 >= rect.x1 || rect.y0 >= rect.y1 {
            return None;
        }
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len2 = dx * dx + dy * dy;
        let data = Arc::make_mut(&mut self.data);
        for y in rect.y0..rect.y1 {
            for x in rect.x0..rect.x1 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                // Distance from the pixel centre to the segment a–b.
                let t = if len2 > 0.0 { (((px - a[0]) * dx + (py - a[1]) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let (cx, cy) = (a[0] + t * dx - px, a[1] + t * dy - py);
                if cx * cx + cy * cy <= r * r {
                    set(&mut data[y * self.width + x], &mut self.painted, fill);
                }
            }
        }
        Some(rect)
    }

    pub fn invert(&mut self) {
        for v in Arc::make_mut(&mut self.data).iter_mut() {
            *v = 1 - (*v).min(1);
        }
        self.painted = self.data.len() - self.painted;
    }

    pub fn clear(&mut self) {
        Arc::make_mut(&mut self.data).fill(0);
        self.painted = 0;
    }

    /// Add (`fill`) or remove the inside of a closed polygon (pixel coordinates; a pixel is
    /// inside when its centre is, by the even-odd rule): rectangle and lasso selections.
    /// Returns the rectangle that may have changed.
    pub fn polygon(&mut self, pts: &[[f32; 2]], fill: bool) -> Option<PixelRect> {
        if pts.len() < 3 {
            return None;
        }
        let (mut y0, mut y1, mut x0, mut x1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in pts {
            (x0, x1, y0, y1) = (x0.min(p[0]), x1.max(p[0]), y0.min(p[1]), y1.max(p[1]));
        }
        let rect = PixelRect {
            x0: (x0.floor().max(0.0) as usize).min(self.width),
            y0: (y0.floor().max(0.0) as usize).min(self.height),
            x1: (x1.ceil().max(0.0) as usize).min(self.width),
            y1: (y1.ceil().max(0.0) as usize).min(self.height),
        };
        if rect.x0 >= rect.x1 || rect.y0 >= rect.y1 {
            return None;
        }
        let data = Arc::make_mut(&mut self.data);
        let mut xs = Vec::new();
        for y in rect.y0..rect.y1 {
            let cy = y as f32 + 0.5;
            xs.clear();
            for (i, a) in pts.iter().enumerate() {
                let b = pts[(i + 1) % pts.len()];
                // Edges crossing the scanline (half-open, so a vertex counts once).
                if (a[1] <= cy) != (b[1] <= cy) {
                    xs.push(a[0] + (cy - a[1]) / (b[1] - a[1]) * (b[0] - a[0]));
                }
            }
            xs.sort_by(f32::total_cmp);
            for span in xs.chunks_exact(2) {
                // Pixels whose centre lies in [span0, span1).
                let from = ((span[0] - 0.5).ceil().max(0.0) as usize).max(rect.x0);
                let to = (((span[1] - 0.5).ceil().max(0.0)) as usize).min(rect.x1);
                for x in from..to {
                    set(&mut data[y * self.width + x], &mut self.painted, fill);
                }
            }
        }
        Some(rect)
    }

    /// Grow the painted region by `px` pixels (an octagonal chamfer distance: nearly round), or
    /// shrink it when `px` is negative.
    pub fn grow(&mut self, px: f32) {
        let m = self.to_mask();
        let data: Vec<u8> = if px >= 0.0 {
            m.distance_outside().iter().map(|&d| u8::from(d <= px)).collect()
        } else {
            // A painted pixel stays when the nearest unpainted one is farther than |px|.
            m.distance_inside().iter().zip(self.data.iter()).map(|(&d, &v)| u8::from(v != 0 && d > -px)).collect()
        };
        *self = PaintMask::from_data(self.width, self.height, data);
    }
}

/// Paint (`fill`) or unpaint one pixel, keeping the painted count.
fn set(v: &mut u8, painted: &mut usize, fill: bool) {
    let value = u8::from(fill);
    if *v != value {
        if fill {
            *painted += 1;
        } else {
            *painted -= 1;
        }
        *v = value;
    }
}

/// Grow `e` so that the canvas is `factor` times the target in each direction, split evenly
/// between opposite sides (the outpainting presets).
pub fn extension_preset(width: usize, height: usize, factor: f32) -> Extension {
    let grow = |n: usize| ((n as f32 * (factor - 1.0)).round().max(0.0) as usize).min(20_000);
    let (gw, gh) = (grow(width), grow(height));
    Extension { left: gw / 2, right: gw - gw / 2, top: gh / 2, bottom: gh - gh / 2 }
}

#[derive(Clone)]
struct State {
    target: Arc<Photo>,
    target_file: Option<PathBuf>,
    mask: RleMask,
    extension: Extension,
}

pub struct Document {
    pub target: Arc<Photo>,
    pub refs: Vec<Arc<Photo>>,
    pub mask: PaintMask,
    pub extension: Extension,
    /// The file that holds the target's current pixels: the photo opened, or where a project
    /// save wrote a fill result; None for a fill result only in memory. (`target.path` keeps
    /// the original's path for naming exports.)
    pub target_file: Option<PathBuf>,
    undo: Vec<State>,
    redo: Vec<State>,
    /// The state before the gesture in progress.
    gesture: Option<State>,
    /// Bumped on every change of pixels, mask or extension (the UI re-uploads textures).
    pub revision: u64,
}

impl Document {
    pub fn new(mut target: Photo) -> Document {
        // Transparent pixels are part of the fill region: they become painted mask (which the
        // user may then erase), so the photo itself no longer needs to carry them.
        let mask = match target.transparent.take() {
            Some(t) => PaintMask::from_mask(&t),
            None => PaintMask::new(target.width(), target.height()),
        };
        Document {
            target_file: Some(target.path.clone()),
            target: Arc::new(target),
            refs: Vec::new(),
            mask,
            extension: Extension::default(),
            undo: Vec::new(),
            redo: Vec::new(),
            gesture: None,
            revision: 0,
        }
    }

    pub fn canvas_size(&self) -> (usize, usize) {
        self.extension.canvas(self.target.width(), self.target.height())
    }

    fn state(&self) -> State {
        State {
            target: self.target.clone(),
            target_file: self.target_file.clone(),
            mask: self.mask.rle(),
            extension: self.extension,
        }
    }

    fn restore(&mut self, s: State) {
        self.target = s.target;
        self.target_file = s.target_file;
        self.mask =
            PaintMask::from_rle(&s.mask).unwrap_or_else(|_| PaintMask::new(self.target.width(), self.target.height()));
        self.extension = s.extension;
        self.revision += 1;
    }

    fn push_undo(&mut self, s: State) {
        self.undo.push(s);
        let mut dropped = std::mem::take(&mut self.redo);
        if self.undo.len() > HISTORY {
            dropped.push(self.undo.remove(0));
        }
        // A state may hold the last reference to a camera photo (hundreds of megabytes):
        // freed off the UI thread (measured: 50 ms for a 48 MP result undone, then refilled).
        if dropped.iter().any(|d| Arc::strong_count(&d.target) == 1) {
            std::thread::spawn(move || drop(dropped));
        }
    }

    /// Start a gesture (brush stroke, edge drag); `end_gesture` makes it one undo step.
    pub fn begin_gesture(&mut self) {
        if self.gesture.is_none() {
            self.gesture = Some(self.state());
        }
    }

    pub fn end_gesture(&mut self) {
        if let Some(before) = self.gesture.take() {
            let changed = before.mask != self.mask.rle() || before.extension != self.extension;
            if changed {
                self.push_undo(before);
            }
        }
    }

    /// A one-shot edit (invert, clear, typed extension): its own undo step.
    pub fn edit(&mut self, f: impl FnOnce(&mut Document)) {
        self.end_gesture();
        let before = self.state();
        f(self);
        if before.mask != self.mask.rle()
            || before.extension != self.extension
            || !Arc::ptr_eq(&before.target, &self.target)
        {
            self.push_undo(before);
            self.revision += 1;
        }
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    pub fn undo(&mut self) -> bool {
        self.step_history(true)
    }

    pub fn redo(&mut self) -> bool {
        self.step_history(false)
    }

    /// Move one state from the undo stack to the redo stack (or back), restoring it.
    fn step_history(&mut self, back: bool) -> bool {
        self.end_gesture();
        let popped = if back { self.undo.pop() } else { self.redo.pop() };
        let Some(s) = popped else { return false };
        let now = self.state();
        if back {
            self.redo.push(now)
        } else {
            self.undo.push(now)
        }
        self.restore(s);
        true
    }

    /// Paint in canvas coordinates (the extension shifts the target).
    pub fn paint(&mut self, a: [f32; 2], b: [f32; 2], radius: f32, fill: bool) -> Option<PixelRect> {
        let (l, t) = (self.extension.left as f32, self.extension.top as f32);
        let r = self.mask.stroke([a[0] - l, a[1] - t], [b[0] - l, b[1] - t], radius, fill);
        if r.is_some() {
            self.revision += 1;
        }
        r
    }

    /// A rectangle or lasso selection (canvas coordinates) added to the mask or taken from it.
    pub fn select(&mut self, pts: &[[f32; 2]], add: bool) -> Option<PixelRect> {
        let (l, t) = (self.extension.left as f32, self.extension.top as f32);
        let local: Vec<[f32; 2]> = pts.iter().map(|p| [p[0] - l, p[1] - t]).collect();
        let r = self.mask.polygon(&local, add);
        if r.is_some() {
            self.revision += 1;
        }
        r
    }

    pub fn set_extension(&mut self, e: Extension) {
        if e != self.extension {
            self.extension = e;
            self.revision += 1;
        }
    }

    /// Is there anything to fill?
    pub fn has_fill_region(&self) -> bool {
        !self.extension.is_zero() || !self.mask.is_empty()
    }

    /// Replace the target with a fill result on the extended canvas: one undo step; the mask
    /// and the extension are used up.
    pub fn accept_fill(&mut self, result: Arc<Photo>) {
        let before = self.state();
        self.replace_target(result);
        self.push_undo(before);
    }

    /// Swap the result of the last accepted fill for another candidate (same undo step).
    pub fn replace_target(&mut self, result: Arc<Photo>) {
        self.mask = PaintMask::new(result.width(), result.height());
        self.extension = Extension::default();
        self.target = result;
        self.target_file = None;
        self.revision += 1;
    }

    /// The photo (and its place on the current canvas) before the last accepted fill, for
    /// before/after comparison.
    pub fn before_last_fill(&self) -> Option<(Arc<Photo>, Extension)> {
        // The newest state with another photo: mask edits after the fill do not hide it.
        let s = self.undo.iter().rev().find(|s| !Arc::ptr_eq(&s.target, &self.target))?;
        Some((s.target.clone(), s.extension))
    }

    /// Add references, skipping the target itself and duplicates; returns one note per
    /// skipped file.
    pub fn add_refs(&mut self, photos: Vec<Photo>) -> Vec<String> {
        self.add_shared_refs(photos.into_iter().map(Arc::new).collect())
    }

    /// `add_refs` for photos already shared (the previous photo's references, kept).
    pub fn add_shared_refs(&mut self, photos: Vec<Arc<Photo>>) -> Vec<String> {
        let mut notes = Vec::new();
        for p in photos {
            if self.target_file.as_ref().is_some_and(|t| crate::scene::io::same_file(&p.path, t)) {
                notes.push(format!("{}: this is the target itself; not added as a reference", p.path.display()));
            } else if self.refs.iter().any(|r| crate::scene::io::same_file(&r.path, &p.path)) {
                notes.push(format!("{}: already a reference", p.path.display()));
            } else if self.refs.len() >= crate::settings::MAX_REFERENCES {
                // What a project can hold (and open again).
                notes.push(format!(
                    "{}: not added; a scene takes at most {} references",
                    p.path.display(),
                    crate::settings::MAX_REFERENCES
                ));
            } else {
                self.refs.push(p);
            }
        }
        notes
    }

    /// Default file name for exporting the current image (never the original's name).
    pub fn export_name(&self) -> PathBuf {
        let p = &self.target.path;
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "photo".into());
        p.with_file_name(format!("{stem}-filled.png"))
    }
}

/// The scene of a document's parts (photos shared, no copy; only the mask is built): what
/// `Document::scene` does, callable on another thread with a copy of the mask.
pub fn scene_of(target: Arc<Photo>, refs: Vec<Arc<Photo>>, mask: &PaintMask, extension: Extension) -> Result<Scene> {
    if extension.is_zero() && mask.is_empty() {
        return Err(Error::Invalid(
            "nothing to fill: brush over what to replace (B), or drag a canvas edge outward".into(),
        ));
    }
    Scene::new(target, Some((mask.to_mask(), Path::new("painted mask"))), extension, refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_painted_count_follows_strokes_erasing_inverting_and_clearing() {
        let mut m = PaintMask::new(40, 30);
        let recount = |m: &PaintMask| m.data().iter().filter(|&&v| v != 0).count();
        m.stroke([5.0, 5.0], [30.0, 20.0], 4.0, true);
        m.stroke([10.0, 5.0], [10.0, 25.0], 3.0, true);
        assert!(m.count() > 100 && m.count() == recount(&m));
        m.stroke([0.0, 10.0], [40.0, 10.0], 2.0, false);
        assert_eq!(m.count(), recount(&m));
        m.invert();
        assert_eq!(m.count(), recount(&m));
        assert!(!m.is_empty());
        m.clear();
        assert!(m.is_empty() && recount(&m) == 0);
        let back = PaintMask::from_rle(&m.rle()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn the_fast_run_length_encoding_equals_the_plain_one() {
        let mut rng = crate::rng::Rng::new(11);
        for (w, h) in [(1, 1), (7, 3), (64, 33), (129, 17)] {
            for density in [0.0, 0.02, 0.5, 0.98, 1.0] {
                let mut data: Vec<u8> = (0..w * h).map(|_| u8::from(rng.range_f32(0.0, 1.0) < density)).collect();
                // Long uniform stretches too (what the word-wise scan skips).
                if w * h > 40 {
                    data[5..37].iter_mut().for_each(|v| *v = 1);
                }
                let m = PaintMask::from_data(w, h, data);
                assert_eq!(m.count(), m.data().iter().filter(|&&v| v != 0).count());
                let plain = RleMask::encode(w, h, m.data.iter().map(|&v| v != 0));
                assert_eq!(m.rle(), plain, "{w}×{h} density {density}");
            }
        }
    }

    fn photo(w: usize, h: usize) -> Photo {
        let img =
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([9, 9, 9])));
        Photo::from_image(PathBuf::from("/tmp/t.png"), img, None)
    }

    /// A scene holds what a project can hold and open again: the reference past the limit is
    /// left out with a note.
    #[test]
    fn references_stop_at_what_a_project_holds() {
        let mut doc = Document::new(photo(8, 6));
        let refs: Vec<Photo> = (0..=crate::settings::MAX_REFERENCES)
            .map(|i| {
                let mut p = photo(8, 6);
                p.path = PathBuf::from(format!("/tmp/realfill-ref-{i}.png"));
                p
            })
            .collect();
        let notes = doc.add_refs(refs);
        assert_eq!(doc.refs.len(), crate::settings::MAX_REFERENCES);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains(&format!("realfill-ref-{}.png", crate::settings::MAX_REFERENCES)), "{notes:?}");
    }

    #[test]
    fn a_stroke_paints_a_capsule_and_erasing_removes_it() {
        let mut m = PaintMask::new(20, 10);
        let r = m.stroke([2.5, 5.5], [12.5, 5.5], 2.0, true).unwrap();
        assert!(m.get(2, 5) && m.get(12, 5) && m.get(7, 4) && m.get(7, 6));
        assert!(!m.get(7, 8) && !m.get(16, 5) && !m.get(2, 8));
        assert!(r.x0 == 0 && r.x1 >= 15 && r.y0 <= 3 && r.y1 >= 8);
        m.stroke([0.0, 0.0], [20.0, 10.0], 30.0, false).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn a_stroke_outside_the_image_changes_nothing() {
        let mut m = PaintMask::new(8, 8);
        assert_eq!(m.stroke([-20.0, -20.0], [-10.0, -30.0], 3.0, true), None);
        assert_eq!(m.stroke([50.0, 3.0], [60.0, 3.0], 3.0, true), None);
        assert!(m.is_empty());
    }

    #[test]
    fn one_undo_step_per_stroke_and_redo_restores() {
        let mut d = Document::new(photo(16, 16));
        d.begin_gesture();
        d.paint([2.0, 2.0], [4.0, 2.0], 1.0, true);
        d.paint([4.0, 2.0], [8.0, 2.0], 1.0, true);
        d.end_gesture();
        let painted = d.mask.clone();
        assert!(!painted.is_empty() && d.can_undo());
        assert!(d.undo());
        assert!(d.mask.is_empty() && !d.can_undo());
        assert!(d.redo());
        assert_eq!(d.mask, painted);
    }

    #[test]
    fn a_gesture_that_changes_nothing_is_not_an_undo_step() {
        let mut d = Document::new(photo(8, 8));
        d.begin_gesture();
        d.paint([-50.0, -50.0], [-40.0, -40.0], 1.0, true);
        d.end_gesture();
        assert!(!d.can_undo());
    }

    #[test]
    fn painting_follows_the_extension_offset() {
        let mut d = Document::new(photo(8, 8));
        d.set_extension(Extension { left: 4, top: 2, right: 0, bottom: 0 });
        d.paint([4.5, 2.5], [4.5, 2.5], 0.5, true);
        assert!(d.mask.get(0, 0) && d.mask.count() == 1);
    }

    #[test]
    fn extension_grows_the_canvas_and_counts_as_a_fill_region() {
        let mut d = Document::new(photo(100, 50));
        let scene = |d: &Document| scene_of(d.target.clone(), d.refs.clone(), &d.mask, d.extension);
        assert!(!d.has_fill_region() && scene(&d).is_err());
        d.edit(|d| d.set_extension(extension_preset(100, 50, 1.5)));
        assert_eq!(d.canvas_size(), (150, 75));
        let s = scene(&d).unwrap();
        assert_eq!(s.canvas_size(), (150, 75));
        assert!(d.undo() && d.canvas_size() == (100, 50));
    }

    #[test]
    fn accepting_a_fill_replaces_the_target_and_undo_brings_it_back() {
        let mut d = Document::new(photo(8, 8));
        d.edit(|d| d.set_extension(Extension { left: 2, top: 0, right: 0, bottom: 0 }));
        let original = d.target.clone();
        let result = image::DynamicImage::ImageRgb8(image::RgbImage::new(10, 8));
        d.accept_fill(Arc::new(Photo::from_image(PathBuf::from("/tmp/t.png"), result, None)));
        assert_eq!((d.target.width(), d.canvas_size()), (10, (10, 8)));
        assert!(d.mask.is_empty() && d.target_file.is_none());
        let (before, ext) = d.before_last_fill().unwrap();
        assert!(Arc::ptr_eq(&before, &original) && ext.left == 2);
        assert!(d.undo());
        assert!(Arc::ptr_eq(&d.target, &original) && d.extension.left == 2);
    }

    #[test]
    fn presets_split_growth_between_sides() {
        assert_eq!(extension_preset(100, 41, 2.0), Extension { left: 50, right: 50, top: 20, bottom: 21 });
        assert_eq!(extension_preset(10, 10, 1.0), Extension::default());
    }

    #[test]
    fn polygons_add_and_remove_their_inside_and_grow_shrink_by_distance() {
        let mut m = PaintMask::new(100, 80);
        // A rectangle 10..50 × 20..40: 800 pixels.
        let rect = [[10.0, 20.0], [50.0, 20.0], [50.0, 40.0], [10.0, 40.0]];
        assert!(m.polygon(&rect, true).is_some());
        assert_eq!(m.count(), 800);
        assert!(m.get(10, 20) && m.get(49, 39) && !m.get(50, 20) && !m.get(9, 30));
        // A triangle taken out of it: its half, 400 pixels (pixel centres on the diagonal are
        // split by the half-open rule).
        let tri = [[10.0, 20.0], [50.0, 20.0], [50.0, 40.0]];
        m.polygon(&tri, false);
        assert!((395..=405).contains(&m.count()), "{}", m.count());
        assert_eq!(m.count(), m.data().iter().filter(|&&v| v != 0).count(), "the count follows");
        // Outside the image: nothing, no panic.
        assert!(m.polygon(&[[-30.0, -30.0], [-10.0, -30.0], [-10.0, -5.0]], true).is_none());
        // Grow then shrink by the same amount: the rectangle again (a convex shape).
        let mut r = PaintMask::new(100, 80);
        r.polygon(&rect, true);
        r.grow(5.0);
        assert!(r.get(6, 30) && r.get(53, 30) && !r.get(3, 30), "grown by 5");
        assert!(r.count() > 800 + 2 * 5 * (40 + 20));
        r.grow(-5.0);
        let diff = (0..100 * 80)
            .filter(|&i| (r.data()[i] != 0) != (i % 100 >= 10 && i % 100 < 50 && i / 100 >= 20 && i / 100 < 40))
            .count();
        assert!(diff < 40, "{diff} pixels differ after growing and shrinking");
        r.grow(-15.0);
        assert_eq!(r.count(), 0, "a 20-pixel-high band shrunk by 15 from each side vanishes");
    }
}
