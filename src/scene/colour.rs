//! Colour: realfill computes in sRGB. A photo with an embedded ICC profile that is not sRGB
//! (Display P3 from a phone, Adobe RGB from a camera) is converted to sRGB for the engines and
//! the screen; the fill is converted back into the photo's own profile before it is written
//! into the original pixels, and the profile is written back on export, so the colours the
//! photographer saw are the colours they get (issue 15). Conversions run on moxcms (the `image`
//! crate's own colour engine: no new build).

use std::sync::Arc;

use moxcms::{ColorProfile, DataColorSpace, Layout, TransformF32Executor, TransformOptions};
use rayon::prelude::*;

use super::raster::RgbF;

/// Conversions between a photo's ICC profile and sRGB.
pub struct Colour {
    to_srgb: Arc<TransformF32Executor>,
    from_srgb: Arc<TransformF32Executor>,
}

impl std::fmt::Debug for Colour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Colour")
    }
}

/// Pixels converted per call (the transforms work on slices).
const CHUNK: usize = 3 * 4096;

fn run(t: &TransformF32Executor, rgb: &mut RgbF) {
    rgb.data.par_chunks_mut(CHUNK).for_each(|c| {
        let src = c.to_vec();
        if t.transform(&src, c).is_err() {
            c.copy_from_slice(&src);
        }
        for v in c.iter_mut() {
            *v = v.clamp(0.0, 1.0);
        }
    });
}

impl Colour {
    /// The conversions for an embedded profile; None when it is sRGB (test colours unchanged to
    /// within one 8-bit level), not an RGB profile, or unreadable (the pixels are then taken as
    /// sRGB, as browsers do).
    pub fn from_icc(icc: &[u8]) -> Option<Colour> {
        let profile = ColorProfile::new_from_slice(icc).ok()?;
        if profile.color_space != DataColorSpace::Rgb {
            return None;
        }
        let srgb = ColorProfile::new_srgb();
        let opts = TransformOptions::default();
        let to_srgb = profile.create_transform_f32(Layout::Rgb, &srgb, Layout::Rgb, opts).ok()?;
        let from_srgb = srgb.create_transform_f32(Layout::Rgb, &profile, Layout::Rgb, opts).ok()?;
        let probe = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.2, 0.7, 0.4];
        let mut out = [0.0f32; 15];
        to_srgb.transform(&probe, &mut out).ok()?;
        if probe.iter().zip(&out).all(|(a, b)| (a - b).abs() < 1.0 / 255.0) {
            return None;
        }
        Some(Colour { to_srgb, from_srgb })
    }

    /// The photo's own values to sRGB, in place.
    pub fn to_srgb(&self, rgb: &mut RgbF) {
        run(self.to_srgb.as_ref(), rgb);
    }

    /// sRGB values to the photo's own profile, in place.
    pub fn from_srgb(&self, rgb: &mut RgbF) {
        run(self.from_srgb.as_ref(), rgb);
    }
}

/// A photo's profile and metadata as read from its file, written back on export.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    /// The embedded ICC profile, as read.
    pub icc: Option<Vec<u8>>,
    /// The EXIF block, as read (its orientation is reset when written: pixels are stored upright).
    pub exif: Option<Vec<u8>>,
    /// Conversions for a profile that is not sRGB.
    pub colour: Option<Arc<Colour>>,
    /// The XMP packet, as read (titles, keywords, rights; `scene::embed` writes it back).
    pub xmp: Option<Vec<u8>>,
    /// The IPTC records as a Photoshop resource block (`scene::embed::irb_from_decoder`).
    pub irb: Option<Vec<u8>>,
}

impl Metadata {
    pub fn new(icc: Option<Vec<u8>>, exif: Option<Vec<u8>>) -> Metadata {
        let colour = icc.as_deref().and_then(Colour::from_icc).map(Arc::new);
        Metadata { icc, exif, colour, xmp: None, irb: None }
    }

    /// The EXIF block to write with upright pixels: orientation set to "as stored".
    pub fn exif_upright(&self) -> Option<Vec<u8>> {
        let mut e = self.exif.clone()?;
        let _ = image::metadata::Orientation::remove_from_exif_chunk(&mut e);
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_p3_converts_to_srgb_and_back_and_srgb_is_left_alone() {
        let p3 = ColorProfile::new_display_p3().encode().unwrap();
        let c = Colour::from_icc(&p3).expect("P3 is not sRGB");
        // P3's pure red is outside sRGB; a mid P3 orange is inside and changes in sRGB.
        let mut rgb = RgbF { width: 2, height: 1, data: vec![0.8, 0.4, 0.2, 0.3, 0.5, 0.6] };
        let before = rgb.data.clone();
        c.to_srgb(&mut rgb);
        assert!((rgb.data[0] - before[0]).abs() > 0.02, "P3 orange is a more saturated sRGB orange: {:?}", rgb.data);
        c.from_srgb(&mut rgb);
        for (a, b) in rgb.data.iter().zip(&before) {
            assert!((a - b).abs() < 1.0 / 255.0, "round trip {a} vs {b}");
        }
        let srgb = ColorProfile::new_srgb().encode().unwrap();
        assert!(Colour::from_icc(&srgb).is_none());
        assert!(Colour::from_icc(b"not a profile").is_none());
    }
}
