//! Where the pixels of a fill came from (issue 30): the share of the fill region each
//! reference gave, by which motion (a plane aligned to the known pixels, the camera's, the
//! subject's) or as shifted copies of its texture where no alignment reaches (`exemplar`),
//! and the share "invented": pixels no reference gave, which the engine fills from the
//! photo's own texture (copies of it included) and continuation (the patch engine still
//! copies patches from the references there, but from no place the alignment vouches for).
//! The command line prints the shares; the app tints the canvas by source.

use crate::align::exemplar::Shift;
use crate::align::guide::{Source, TargetWarp};
use crate::scene::{Mask, RgbF};

/// One reference under one motion, and the share of the fill region it gave.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceShare {
    /// Index into `Scene::refs`.
    pub reference: usize,
    pub source: Source,
    pub share: f32,
}

/// Per working pixel of a fill: `KNOWN`, `INVENTED`, or `FIRST + k` for `shares[k]`.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub shares: Vec<SourceShare>,
    pub width: usize,
    pub height: usize,
    pub map: Vec<u16>,
}

pub const KNOWN: u16 = 0;
pub const INVENTED: u16 = 1;
pub const FIRST: u16 = 2;
/// Not yet assigned while the map is built.
const UNSET: u16 = u16::MAX;

/// The sources of a fill from the warps of its guide (each with the working pixels it covers),
/// the shifted copies beyond them (`align::exemplar`, per working pixel; empty for none) and
/// the working fill mask; shares largest first.
pub fn of(warps: &[TargetWarp], copies: &[Option<Shift>], fill: &Mask) -> Sources {
    let n = fill.data.len();
    let to_fill = fill.data.iter().filter(|&&f| f >= 0.5).count().max(1) as f32;
    // Group by reference and motion (one reference's several planes are one source).
    let mut shares: Vec<SourceShare> = Vec::new();
    let mut group_of = |reference: usize, source: Source| match shares
        .iter()
        .position(|s| s.reference == reference && s.source == source)
    {
        Some(k) => k,
        None => {
            shares.push(SourceShare { reference, source, share: 0.0 });
            shares.len() - 1
        }
    };
    let group: Vec<usize> = warps.iter().map(|w| group_of(w.reference, w.source)).collect();
    let mut map = vec![KNOWN; n];
    let mut count: Vec<usize> = Vec::new();
    for i in 0..n {
        if fill.data[i] < 0.5 {
            continue;
        }
        // The first warp that covers a pixel is the one the guide took there; beyond every
        // warp, a copy of a reference's pixels is that reference's (a copy of the photo's own
        // pixels is invented).
        let k = match warps.iter().position(|w| w.covers.data[i] >= 0.5) {
            Some(c) => Some(group[c]),
            None => match copies.get(i).copied().flatten() {
                Some(s) if s.src > 0 => Some(group_of(s.src - 1, Source::Copied)),
                _ => None,
            },
        };
        map[i] = match k {
            Some(k) => {
                count.resize(count.len().max(k + 1), 0);
                count[k] += 1;
                k as u16
            }
            None => UNSET,
        };
    }
    count.resize(shares.len(), 0);
    // Largest first; renumber the map to match.
    let mut order: Vec<usize> = (0..shares.len()).filter(|&k| count[k] > 0).collect();
    order.sort_by(|&a, &b| count[b].cmp(&count[a]));
    // (a scene of more than 65,000 references would share the last number: not a real case)
    let mut rank = vec![UNSET - 1; shares.len()];
    for (r, &k) in order.iter().enumerate() {
        rank[k] = (FIRST as usize + r).min(UNSET as usize - 1) as u16;
    }
    for (i, m) in map.iter_mut().enumerate() {
        if fill.data[i] >= 0.5 {
            *m = if *m == UNSET { INVENTED } else { rank[*m as usize] };
        }
    }
    let shares = order.iter().map(|&k| SourceShare { share: count[k] as f32 / to_fill, ..shares[k].clone() }).collect();
    Sources { shares, width: fill.width, height: fill.height, map }
}

impl Sources {
    /// The share no reference gave.
    pub fn invented(&self) -> f32 {
        (1.0 - self.shares.iter().map(|s| s.share).sum::<f32>()).max(0.0)
    }

    /// "ref0.png 62 % (camera), ref0.png 30 % (subject's motion), invented 8 %" for `names`
    /// of the references.
    pub fn describe(&self, names: &[String]) -> String {
        let mut parts: Vec<String> = self
            .shares
            .iter()
            .map(|s| {
                format!(
                    "{} {:.0} % ({})",
                    names.get(s.reference).map_or("?", |n| n.as_str()),
                    100.0 * s.share,
                    what(s.source)
                )
            })
            .collect();
        parts.push(format!("invented {:.0} %", 100.0 * self.invented()));
        parts.join(", ")
    }

    /// The tint of each source, as `tint` paints it, with its words: for a legend.
    pub fn legend(&self, names: &[String]) -> Vec<([u8; 3], String)> {
        let mut out: Vec<([u8; 3], String)> = self
            .shares
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let name = names.get(s.reference).map_or("?", |n| n.as_str());
                (colour(FIRST + k as u16), format!("{name} {:.0} % ({})", 100.0 * s.share, what(s.source)))
            })
            .collect();
        out.push((colour(INVENTED), format!("invented {:.0} %", 100.0 * self.invented())));
        out
    }

    /// `image` (any size: the map is scaled to it) with each filled pixel tinted by its source.
    pub fn tint(&self, image: &RgbF) -> RgbF {
        RgbF::from_fn(image.width, image.height, |x, y| {
            let c = image.get(x, y);
            match self.at(x, y, image.width, image.height) {
                KNOWN => c.map(|v| 0.6 * v),
                s => {
                    let t = colour(s).map(|v| v as f32 / 255.0);
                    [0, 1, 2].map(|k| 0.45 * c[k] + 0.55 * t[k])
                }
            }
        })
    }

    /// The source of pixel (x, y) of a `w`×`h` image of the same canvas (the map's pixel whose
    /// area holds that pixel's centre).
    pub fn at(&self, x: usize, y: usize, w: usize, h: usize) -> u16 {
        if self.map.is_empty() {
            return KNOWN;
        }
        let sx = (((2 * x + 1) * self.width) / (2 * w.max(1))).min(self.width - 1);
        let sy = (((2 * y + 1) * self.height) / (2 * h.max(1))).min(self.height - 1);
        self.map[sy * self.width + sx]
    }
}

fn what(s: Source) -> &'static str {
    match s {
        Source::Plane => "aligned",
        Source::Camera => "camera",
        Source::Subject => "subject's motion",
        Source::Copied => "copied, not aligned",
    }
}

/// Invented: magenta; the sources: blue, orange, green, cyan, yellow, then grey.
pub fn colour(s: u16) -> [u8; 3] {
    const SOURCES: [[u8; 3]; 5] = [[40, 110, 255], [255, 140, 0], [40, 200, 60], [0, 210, 220], [240, 220, 0]];
    match s {
        INVENTED => [255, 0, 200],
        KNOWN => [0, 0, 0],
        s => SOURCES.get((s - FIRST) as usize).copied().unwrap_or([160, 160, 160]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::Homography;

    fn warp(reference: usize, source: Source, covers: &[usize], n: usize) -> TargetWarp {
        let mut m = Mask::new(n, 1, 0.0);
        covers.iter().for_each(|&i| m.data[i] = 1.0);
        TargetWarp { reference, target_to_ref: Homography::IDENTITY, field: None, covers: m, source }
    }

    #[test]
    fn shares_count_each_fill_pixel_once_by_the_first_warp_that_covers_it() {
        // Ten pixels, eight to fill (0 and 9 known). Reference 0's camera covers 1–4, its
        // subject 4–6 (4 is the camera's: first), reference 1's two planes 7 and 3; 8 is left.
        let mut fill = Mask::new(10, 1, 1.0);
        fill.data[0] = 0.0;
        fill.data[9] = 0.0;
        let warps = vec![
            warp(0, Source::Camera, &[0, 1, 2, 3, 4], 10),
            warp(0, Source::Subject, &[4, 5, 6], 10),
            warp(1, Source::Plane, &[7], 10),
            warp(1, Source::Plane, &[3, 9], 10),
        ];
        let s = of(&warps, &[], &fill);
        let got: Vec<(usize, Source, f32)> = s.shares.iter().map(|s| (s.reference, s.source, s.share)).collect();
        assert_eq!(got, vec![(0, Source::Camera, 0.5), (0, Source::Subject, 0.25), (1, Source::Plane, 0.125)]);
        assert!((s.invented() - 0.125).abs() < 1e-6);
        assert_eq!(s.map, vec![KNOWN, 2, 2, 2, 2, 3, 3, 4, INVENTED, KNOWN]);
        let names = vec!["a.png".to_string(), "b.png".to_string()];
        assert_eq!(
            s.describe(&names),
            "a.png 50 % (camera), a.png 25 % (subject's motion), b.png 12 % (aligned), invented 12 %"
        );
        // The tint leaves no filled pixel its own colour, and dims the known ones.
        let img = RgbF::from_fn(10, 1, |_, _| [0.5; 3]);
        let t = s.tint(&img);
        assert_eq!(t.get(0, 0), [0.3; 3]);
        assert_ne!(t.get(8, 0), t.get(1, 0));
    }

    #[test]
    fn copies_beyond_the_warps_are_their_references_and_copies_of_the_photo_are_invented() {
        // Six pixels to fill: a warp of reference 0 covers 0–1; beyond it, 2–3 are copies of
        // reference 1, 4 a copy of the photo, 5 nothing. A copy never outranks a warp (1).
        let fill = Mask::new(6, 1, 1.0);
        let warps = vec![warp(0, Source::Plane, &[0, 1], 6)];
        let shift = |src| Some(Shift { src, dx: 3, dy: 0 });
        let copies = vec![None, shift(2), shift(2), shift(2), shift(0), None];
        let s = of(&warps, &copies, &fill);
        let got: Vec<(usize, Source)> = s.shares.iter().map(|s| (s.reference, s.source)).collect();
        assert_eq!(got, vec![(0, Source::Plane), (1, Source::Copied)]);
        assert_eq!(s.map, vec![2, 2, 3, 3, INVENTED, INVENTED]);
        let names = vec!["a.png".to_string(), "b.png".to_string()];
        assert_eq!(s.describe(&names), "a.png 33 % (aligned), b.png 33 % (copied, not aligned), invented 33 %");
    }
}
