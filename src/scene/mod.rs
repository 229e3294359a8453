//! The document: the target photo, its fill mask, the canvas extension (outpainting) and the
//! reference photos; plus reading/writing files and compositing the result.

pub mod blend;
pub mod blur;
pub mod colour;
pub mod composite;
pub mod demo;
pub mod embed;
pub mod io;
pub mod project;
pub mod pushpull;
pub mod raster;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
pub use io::Photo;
pub use raster::{Mask, RgbF};

/// Pixels added on each side of the target (outpainting). The new border is always filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extension {
    pub left: usize,
    pub top: usize,
    pub right: usize,
    pub bottom: usize,
}

impl Extension {
    /// The most pixels added on one side.
    pub const MAX_SIDE: usize = 20_000;

    /// Parse "L,T,R,B" (pixels, non-negative integers).
    pub fn parse(s: &str) -> Result<Extension> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let bad = || Error::Invalid(format!("--extend {s:?}: expected four pixel counts L,T,R,B such as 64,0,64,0"));
        if parts.len() != 4 {
            return Err(bad());
        }
        if parts.iter().any(|p| p.parse::<i64>().is_ok_and(|v| v < 0)) {
            return Err(Error::Invalid(format!(
                "--extend {s:?}: pixels to add on each side cannot be negative (0 leaves a side as it is; to crop, crop the photo first)"
            )));
        }
        let v: Vec<usize> = parts.iter().map(|p| p.parse::<usize>().map_err(|_| bad())).collect::<Result<_>>()?;
        let ext = Extension { left: v[0], top: v[1], right: v[2], bottom: v[3] };
        if v.iter().any(|&p| p > Extension::MAX_SIDE) {
            return Err(Error::Invalid(format!("--extend {s:?}: at most {} pixels per side", Extension::MAX_SIDE)));
        }
        Ok(ext)
    }

    pub fn is_zero(&self) -> bool {
        *self == Extension::default()
    }

    pub fn canvas(&self, w: usize, h: usize) -> (usize, usize) {
        (w + self.left + self.right, h + self.top + self.bottom)
    }
}

/// Photos are shared (`Arc`): a job's scene and the app's document hold the same pixels.
#[derive(Clone, Debug)]
pub struct Scene {
    pub target: Arc<Photo>,
    pub refs: Vec<Arc<Photo>>,
    pub extension: Extension,
    /// Fill region on the extended canvas (1 = fill): the user's mask, transparent target
    /// pixels and the extension border.
    pub mask: Mask,
}

impl Scene {
    /// Assemble a scene and check it is consistent. `mask_path` is only used in messages.
    pub fn new(
        target: impl Into<Arc<Photo>>,
        user_mask: Option<(Mask, &Path)>,
        extension: Extension,
        refs: Vec<Arc<Photo>>,
    ) -> Result<Scene> {
        let target = target.into();
        let (w, h) = (target.width(), target.height());
        let (cw, ch) = extension.canvas(w, h);
        if cw as u64 * ch as u64 > io::MAX_PIXELS {
            return Err(Error::Invalid(format!(
                "the canvas with the extension would be {cw}×{ch} ({:.0} MP), above realfill's limit of {} MP; extend it less",
                cw as f64 * ch as f64 / 1e6,
                io::MAX_PIXELS / 1_000_000
            )));
        }
        let mut inner = Mask::new(w, h, 0.0);
        if let Some((m, path)) = &user_mask {
            if (m.width, m.height) != (w, h) {
                // A mask of the target's size turned by a quarter: an EXIF orientation tag
                // (honoured, as photo viewers do) that the painting program did not mean.
                let turned = if (m.height, m.width) == (w, h) {
                    "; it is the target's size turned by 90°: if the mask file carries an EXIF orientation tag, \
                     save it without one (realfill honours the tag, as photo viewers do)"
                } else {
                    "; the mask must have the target's size"
                };
                return Err(Error::input(
                    path,
                    format!(
                        "mask is {}×{} but the target {} is {w}×{h}{turned}",
                        m.width,
                        m.height,
                        target.path.display()
                    ),
                ));
            }
            inner.union(m);
        }
        if let Some(t) = &target.transparent {
            inner.union(t);
        }
        let mut mask = Mask::new(cw, ch, 1.0);
        for y in 0..h {
            for x in 0..w {
                mask.set(x + extension.left, y + extension.top, inner.get(x, y));
            }
        }
        if mask.is_empty() {
            let problem = match &user_mask {
                Some((_, p)) => format!(
                    "mask {} is empty (all black): nothing to fill; paint the region to replace in white",
                    p.display()
                ),
                None => "nothing to fill: give --mask (white = fill) or --extend L,T,R,B".to_string(),
            };
            return Err(Error::Invalid(problem));
        }
        Ok(Scene { target, refs, extension, mask })
    }

    pub fn canvas_size(&self) -> (usize, usize) {
        (self.mask.width, self.mask.height)
    }

    /// The target on the extended canvas; pixels to fill are set to 0 (the model never sees
    /// them, and a stale value must not leak into the result).
    pub fn canvas_rgb(&self) -> RgbF {
        let (cw, ch) = self.canvas_size();
        let e = self.extension;
        let (w, h) = (self.target.width(), self.target.height());
        RgbF::from_fn(cw, ch, |x, y| {
            let inside = x >= e.left && y >= e.top && x < e.left + w && y < e.top + h;
            if inside && self.mask.get(x, y) < 0.5 { self.target.rgb.get(x - e.left, y - e.top) } else { [0.0; 3] }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_parses_and_rejects() {
        assert_eq!(Extension::parse("1, 2,3,4").unwrap(), Extension { left: 1, top: 2, right: 3, bottom: 4 });
        assert!(Extension::parse("1,2,3").is_err());
        assert!(Extension::parse("1,2,3,-4").is_err());
        assert!(Extension::parse("a,b,c,d").is_err());
    }
}
