//! Which warped reference to believe, pixel by pixel. A scene seen from two places is several
//! planes and things that move: one reference warped by one homography is right on its plane
//! and wrong elsewhere (the other book pasted at a tilt, a person who has walked away). The
//! target's known pixels are the only ground truth there is, so each candidate warp (a
//! reference under one of its plane models) is scored where it can be checked — on the known
//! pixels, by how closely it reproduces them locally — and those scores are carried into the
//! hole from its surroundings by normalised convolution, over the smallest neighbourhood that
//! holds enough known pixels. Each pixel to fill then takes the candidate trusted most there,
//! or none when no candidate reaches `MIN_TRUST`: the engines then fall back to the target's
//! own patches and the smooth continuation instead of copying a wrong plane.
//!
//! A known pixel a candidate does not cover counts against it (a warp that covers only part of
//! the hole's surroundings is not evidence for the rest), and so does one it covers badly: a
//! person in the reference standing where the target shows wall disagrees along the hole's
//! edge, and the part of the hole next to that edge does not take the person.

use rayon::prelude::*;

use crate::scene::blur::{blur, box_filter};
use crate::scene::{Mask, RgbF};

/// Mean absolute difference per channel ([0, 1] units, after a light blur that forgives
/// sub-pixel misregistration) at which a known pixel's agreement counts half.
const AGREE_TAU: f32 = 0.045;
/// Blur of both images before comparing, in working pixels.
const COMPARE_SIGMA: f32 = 1.0;
/// How far (pixels) a candidate may show a known pixel's value and still be trusted: whether
/// any candidate may be copied is judged with this slack (an edge half a pixel off is still
/// the right content); which one is copied, without it (so that the one that puts edges
/// exactly in place wins: parallax corrections move things by less than a pixel).
const SLACK: isize = 1;
/// Side of the box over which differences are averaged (a local patch, so single noisy pixels
/// do not decide).
const WINDOW: usize = 2;
/// Weight of a flat known pixel's agreement, and the gradient (grey levels per 2 px) that
/// counts fully.
const FLAT: f32 = 0.05;
const EDGE: f32 = 0.06;
/// Known pixels within this distance of the hole (working pixels) rank the candidates.
const NEAR: f32 = 48.0;
/// Below this propagated trust a candidate is not copied.
pub const MIN_TRUST: f32 = 0.5;
/// How much more trust a candidate needs to win over one that explains more of the known
/// photo: where the surroundings cannot tell them apart (a flat wall) the choice must not
/// flicker between two warps.
const PREFER: f32 = 0.05;
/// Neighbourhoods tried, smallest first (σ in working pixels).
const SIGMAS: [f32; 7] = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// A neighbourhood is enough when known pixels make up this share of its Gaussian weight.
const ENOUGH: f32 = 0.15;

/// One candidate: a reference warped into the target's frame (exposure-matched), valid where
/// the warp lands inside the reference.
pub struct Candidate<'a> {
    pub rgb: &'a RgbF,
    pub valid: &'a Mask,
    /// Precedence of its reference (0 first): among candidates of equal rank, the one that
    /// explains more of the known pixels around the hole is preferred. Measured: ranking
    /// every candidate by that alone mixed two well-aligned references pixel by pixel
    /// (coffee-strokes 39.84 → 37.37 dB), while within one reference it picks the right
    /// plane and parallax (rubberwhale-rect 28.88 → 30.38 dB).
    pub rank: usize,
    /// The plain warp of the still-camera model.
    pub still: bool,
    /// A parallax-corrected warp.
    pub corrected: bool,
    /// Of a local plane (`align::Alignment::local`): considered after every other candidate of
    /// every reference, and only where none of those is trusted.
    pub local: bool,
}

/// Per candidate, its trust at every pixel (known pixels: its local agreement; pixels to fill:
/// the agreement of the surroundings), and per pixel the chosen candidate.
pub struct Trust {
    pub width: usize,
    pub height: usize,
    /// `trust[c][i]` in [0, 1].
    pub trust: Vec<Vec<f32>>,
    /// The candidate each pixel takes, if any is trusted there.
    pub choice: Vec<Option<u32>>,
}

fn blurred(img: &RgbF, sigma: f32) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    let mut out = vec![0.0f32; 3 * w * h];
    // The cheap blur treats the outside as zero: divide by the blurred ones.
    let mut ones = vec![1.0f32; w * h];
    blur(&mut ones, w, h, sigma);
    for k in 0..3 {
        let mut ch: Vec<f32> = (0..w * h).map(|i| img.data[3 * i + k]).collect();
        blur(&mut ch, w, h, sigma);
        for i in 0..w * h {
            out[3 * i + k] = ch[i] / ones[i].max(1e-6);
        }
    }
    out
}

/// Box mean of `v` weighted by `wt` over a (2r+1)² window (clipped at the border); 0 where
/// no weight.
fn box_mean(v: &[f32], wt: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut num: Vec<f32> = v.iter().zip(wt).map(|(v, w)| v * w).collect();
    let mut den = wt.to_vec();
    box_filter(&mut num, w, h, r);
    box_filter(&mut den, w, h, r);
    num.iter().zip(&den).map(|(n, d)| if *d > 1e-9 { n / d } else { 0.0 }).collect()
}

/// How far each known pixel's neighbourhood in `c` differs from the target's: 1 where they
/// agree, falling to 0 as they differ; 0 where `c` does not cover the pixel.
/// `t` and `g`: the target and the candidate after `blurred(_, COMPARE_SIGMA)`.
fn agreement(t: &[f32], g: &[f32], w: usize, h: usize, known: &Mask, c: &Candidate<'_>, slack: isize) -> Vec<f32> {
    let both: Vec<f32> =
        (0..w * h).map(|i| if known.data[i] >= 0.5 && c.valid.data[i] >= 0.5 { 1.0 } else { 0.0 }).collect();
    // With `slack`, a pixel is explained when the candidate shows it within that many pixels
    // (strong edges a fraction of a pixel off would otherwise read as disagreement).
    let diff: Vec<f32> = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            let mut best = f32::MAX;
            for dy in -slack..=slack {
                for dx in -slack..=slack {
                    let (xx, yy) = (x + dx, y + dy);
                    if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                        continue;
                    }
                    let j = yy as usize * w + xx as usize;
                    if c.valid.data[j] < 0.5 {
                        continue;
                    }
                    best = best.min((0..3).map(|k| (t[3 * i + k] - g[3 * j + k]).abs()).sum::<f32>() / 3.0);
                }
            }
            if best == f32::MAX { 1.0 } else { best }
        })
        .collect();
    let local = box_mean(&diff, &both, w, h, WINDOW);
    (0..w * h)
        .map(|i| if both[i] > 0.0 { (-(local[i] / AGREE_TAU).powi(2) * std::f32::consts::LN_2).exp() } else { 0.0 })
        .collect()
}

/// How much a known pixel's agreement says: a flat pixel (a bare wall) is explained by
/// almost any warp, an edge or texture only by the right one. `FLAT` plus the local gradient
/// (of the lightly blurred target's grey) up to 1; 0 on pixels to fill.
/// `t`: the target after `blurred(target, COMPARE_SIGMA)`.
fn evidence(t: &[f32], known: &[f32], w: usize, h: usize) -> Vec<f32> {
    let g: Vec<f32> = t.chunks_exact(3).map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]).collect();
    (0..w * h)
        .map(|i| {
            if known[i] <= 0.0 {
                return 0.0;
            }
            let (x, y) = (i % w, i / w);
            let gx = g[y * w + (x + 1).min(w - 1)] - g[y * w + x.saturating_sub(1)];
            let gy = g[(y + 1).min(h - 1) * w + x] - g[y.saturating_sub(1) * w + x];
            FLAT + (gx.hypot(gy) / EDGE).min(1.0)
        })
        .collect()
}

/// Carry per-pixel agreements (known pixels) into the hole: at each pixel to fill, their
/// evidence-weighted mean over the smallest neighbourhood that holds enough known pixels.
fn propagate(agree: &[Vec<f32>], k: &[f32], e: &[f32], w: usize, h: usize) -> Vec<Vec<f32>> {
    let mut trust: Vec<Vec<f32>> = agree.to_vec();
    let mut done: Vec<bool> = k.iter().map(|&v| v > 0.0).collect();
    for &sigma in &SIGMAS {
        if done.iter().all(|&d| d) {
            break;
        }
        let mut kb = k.to_vec();
        blur(&mut kb, w, h, sigma);
        // The Gaussian's weight inside the image, so that a hole at the border is not starved.
        let mut ones = vec![1.0f32; w * h];
        blur(&mut ones, w, h, sigma);
        let mut eb = e.to_vec();
        blur(&mut eb, w, h, sigma);
        let spread: Vec<Vec<f32>> = agree
            .par_iter()
            .map(|a| {
                let mut b: Vec<f32> = a.iter().zip(e).map(|(a, e)| a * e).collect();
                blur(&mut b, w, h, sigma);
                b
            })
            .collect();
        for i in 0..w * h {
            if !done[i] && kb[i] >= ENOUGH * ones[i] {
                for (t, s) in trust.iter_mut().zip(&spread) {
                    t[i] = (s[i] / eb[i].max(1e-9)).clamp(0.0, 1.0);
                }
                done[i] = true;
            }
        }
    }
    // Pixels no neighbourhood reached (no known pixel at all): nothing is trusted.
    for i in 0..w * h {
        if !done[i] {
            trust.iter_mut().for_each(|t| t[i] = 0.0);
        }
    }
    trust
}

/// Score every candidate and choose, per pixel, the one trusted most there.
pub fn choose(target: &RgbF, known: &Mask, candidates: &[Candidate<'_>], dbg: &super::Diagnostics) -> Trust {
    let (w, h) = (target.width, target.height);
    let k: Vec<f32> = known.data.iter().map(|&v| if v >= 0.5 { 1.0 } else { 0.0 }).collect();
    let t = blurred(target, COMPARE_SIGMA);
    let e = evidence(&t, &k, w, h);
    let (loose, tight): (Vec<Vec<f32>>, Vec<Vec<f32>>) = candidates
        .par_iter()
        .map(|c| {
            let g = blurred(c.rgb, COMPARE_SIGMA);
            (agreement(&t, &g, w, h, known, c, SLACK), agreement(&t, &g, w, h, known, c, 0))
        })
        .unzip();
    // Both sets in one pass (the neighbourhood weights are shared).
    let n = loose.len();
    let mut both = propagate(&[loose, tight.clone()].concat(), &k, &e, w, h);
    let exact = both.split_off(n);
    let trust = both;
    // Preference where the surroundings cannot tell candidates apart: by rank, then by how
    // much of the known photo around the hole each explains exactly.
    let hole = Mask { width: w, height: h, data: k.iter().map(|v| 1.0 - v).collect() };
    let near: Vec<f32> = hole.distance_outside().iter().map(|&d| if d <= NEAR { 1.0 } else { 0.0 }).collect();
    let explained: Vec<f32> =
        tight.iter().map(|a| a.iter().zip(&e).zip(&near).map(|((a, e), n)| a * e * n).sum::<f32>()).collect();
    if dbg.on() {
        let n = e.iter().zip(&near).map(|(e, n)| e * n).sum::<f32>().max(1e-9);
        eprintln!(
            "trust: share of the known pixels near the hole each candidate explains: {:?}",
            explained.iter().map(|e| (e / n * 1000.0).round() / 1000.0).collect::<Vec<_>>()
        );
    }
    // A reference whose still-camera warp explains the hole's surroundings better than every
    // other plain warp was taken from the same place: what its parallax fields correct is
    // things that moved, not depth, and the field carries that motion into the hole (people
    // who moved, extrapolated over the wall behind them). Its corrected warps rank after its
    // plain ones there (basketball-rect 35.02 → 36.99 dB), so they win only where clearly
    // better; elsewhere a corrected warp is true parallax and ranks by what it explains.
    let same_place = |r: usize| {
        let plain = |c: &usize| candidates[*c].rank == r && !candidates[*c].corrected;
        let best_still = (0..candidates.len())
            .filter(plain)
            .filter(|&c| candidates[c].still)
            .map(|c| explained[c])
            .fold(f32::MIN, f32::max);
        (0..candidates.len()).filter(plain).filter(|&c| !candidates[c].still).all(|c| explained[c] < best_still)
    };
    let demoted = |c: usize| candidates[c].corrected && same_place(candidates[c].rank);
    let mut preference: Vec<usize> = (0..candidates.len()).collect();
    preference.sort_by(|&a, &b| {
        (candidates[a].local, candidates[a].rank, demoted(a))
            .cmp(&(candidates[b].local, candidates[b].rank, demoted(b)))
            .then(explained[b].total_cmp(&explained[a]))
    });
    // Per pixel: among the candidates trusted there, the one that explains its surroundings
    // most exactly (on a known pixel — the feather band, the guide's own patches — its own
    // neighbourhood); a less preferred one must beat a more preferred one by `PREFER`.
    let choice = (0..w * h)
        .map(|i| {
            let mut best: Option<usize> = None;
            for &c in &preference {
                if candidates[c].valid.data[i] < 0.5 || trust[c][i] < MIN_TRUST {
                    continue;
                }
                // A local plane only where no whole-photo model is trusted: near the hole it
                // can explain a few known pixels better than the main plane by fitting their
                // noise (coffee-strokes 39.84 → 38.98 dB when it competed).
                if candidates[c].local && best.is_some_and(|b| !candidates[b].local) {
                    continue;
                }
                if best.is_none_or(|b| exact[c][i] > exact[b][i] + PREFER) {
                    best = Some(c);
                }
            }
            best.map(|c| c as u32)
        })
        .collect();
    Trust { width: w, height: h, trust, choice }
}

impl Trust {
    /// The pixels that take candidate `c` (1) — the mask the guide and the native detail use.
    pub fn chosen_mask(&self, c: usize) -> Mask {
        let data = self.choice.iter().map(|k| (*k == Some(c as u32)) as u8 as f32).collect();
        Mask { width: self.width, height: self.height, data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `choose` without diagnostics.
    fn choose(target: &RgbF, known: &Mask, candidates: &[Candidate<'_>]) -> Trust {
        super::choose(target, known, candidates, &crate::align::Diagnostics::default())
    }

    /// A target whose left half is one texture and right half another; candidate A shows the
    /// left texture everywhere, candidate B the right one. The hole straddles the boundary.
    fn two_planes() -> (RgbF, Mask, RgbF, RgbF) {
        let (w, h) = (96, 64);
        let left = |x: usize, y: usize| [0.5 + 0.3 * ((x as f32 * 0.7).sin() * (y as f32 * 0.4).cos()), 0.3, 0.6];
        let right = |x: usize, y: usize| [0.2, 0.5 + 0.3 * ((x as f32 * 0.3 + y as f32 * 0.9).sin()), 0.3];
        let target = RgbF::from_fn(w, h, |x, y| if x < w / 2 { left(x, y) } else { right(x, y) });
        let a = RgbF::from_fn(w, h, left);
        let b = RgbF::from_fn(w, h, right);
        let mut known = Mask::new(w, h, 1.0);
        for y in 20..44 {
            for x in 28..68 {
                known.set(x, y, 0.0);
            }
        }
        (target, known, a, b)
    }

    #[test]
    fn each_side_of_a_hole_takes_the_candidate_its_surroundings_agree_with() {
        let (target, known, a, b) = two_planes();
        let all = Mask::new(target.width, target.height, 1.0);
        let t = choose(
            &target,
            &known,
            &[
                Candidate { rgb: &a, valid: &all, rank: 0, still: false, corrected: false, local: false },
                Candidate { rgb: &b, valid: &all, rank: 0, still: false, corrected: false, local: false },
            ],
        );
        // Well inside each half of the hole.
        assert_eq!(t.choice[32 * 96 + 32], Some(0), "left part takes the left plane");
        assert_eq!(t.choice[32 * 96 + 64], Some(1), "right part takes the right plane");
        assert!(t.trust[0][32 * 96 + 32] > 0.8 && t.trust[1][32 * 96 + 32] < 0.3);
        // Known pixels take the candidate that reproduces them.
        assert_eq!((t.choice[5 * 96 + 5], t.choice[5 * 96 + 90]), (Some(0), Some(1)));
    }

    #[test]
    fn a_candidate_that_disagrees_everywhere_is_not_copied() {
        let (target, known, _, _) = two_planes();
        let wrong = RgbF::from_fn(target.width, target.height, |x, y| [((x * 7 + y * 3) % 11) as f32 / 11.0, 0.9, 0.1]);
        let all = Mask::new(target.width, target.height, 1.0);
        let t = choose(
            &target,
            &known,
            &[Candidate { rgb: &wrong, valid: &all, rank: 0, still: false, corrected: false, local: false }],
        );
        assert!(t.choice.iter().all(|c| c.is_none()), "a wrong plane must not be pasted");
        let chosen_in_hole = (0..96 * 64).filter(|&i| known.data[i] < 0.5 && t.choice[i].is_some()).count();
        assert_eq!(chosen_in_hole, 0);
    }

    #[test]
    fn a_candidate_covering_only_part_of_the_surroundings_is_trusted_only_there() {
        let (target, known, a, _) = two_planes();
        // A covers only the left half of the frame (it agrees there) and nothing on the right.
        let mut half = Mask::new(target.width, target.height, 0.0);
        for y in 0..64 {
            for x in 0..48 {
                half.set(x, y, 1.0);
            }
        }
        let t = choose(
            &target,
            &known,
            &[Candidate { rgb: &a, valid: &half, rank: 0, still: false, corrected: false, local: false }],
        );
        assert_eq!(t.choice[32 * 96 + 32], Some(0));
        // Right of the hole's middle: A is not valid there at all.
        assert_eq!(t.choice[32 * 96 + 60], None);
    }

    #[test]
    fn a_moved_object_crossing_the_hole_edge_is_not_copied_into_it() {
        // The reference is the target's scene with a dark square (someone who walked in)
        // over the hole's left edge; the target shows background there.
        let (target, known, a, _) = two_planes();
        let all = Mask::new(target.width, target.height, 1.0);
        let mut moved = a.clone();
        for y in 22..42 {
            for x in 16..40 {
                moved.set(x, y, [0.05, 0.05, 0.05]);
            }
        }
        let t = choose(
            &target,
            &known,
            &[Candidate { rgb: &moved, valid: &all, rank: 0, still: false, corrected: false, local: false }],
        );
        // Inside the hole, where the square lies: not trusted, so not copied.
        for x in 29..36 {
            assert_eq!(t.choice[30 * 96 + x], None, "the moved square at x = {x} must not be copied");
        }
        // The square's own known part disagrees; the background left of it still agrees.
        assert!(t.trust[0][30 * 96 + 20] < MIN_TRUST && t.trust[0][30 * 96 + 8] > 0.9);
    }

    #[test]
    fn from_the_same_place_a_corrected_warp_does_not_outrank_the_still_camera() {
        // Candidate 0: the still camera's warp, right everywhere except a small known patch
        // (someone who moved). Candidate 1: a "corrected" warp that matches that patch too (its
        // field was fitted there) but carries the motion into the hole, where it is wrong.
        let (target, known, a, _) = two_planes();
        let all = Mask::new(target.width, target.height, 1.0);
        let mut still = a.clone();
        for y in 45..51 {
            for x in 40..46 {
                still.set(x, y, [0.0, 0.0, 0.0]);
            }
        }
        let corrected = RgbF::from_fn(target.width, target.height, |x, y| {
            if known.get(x, y) >= 0.5 { target.get(x, y) } else { a.get(x + 1, y) }
        });
        let cands = |still_flag: bool| {
            [
                Candidate { rgb: &still, valid: &all, rank: 0, still: still_flag, corrected: false, local: false },
                Candidate { rgb: &corrected, valid: &all, rank: 0, still: false, corrected: true, local: false },
            ]
        };
        // Inside the hole's left half, both are trusted alike; the still camera wins.
        let t = choose(&target, &known, &cands(true));
        assert_eq!(t.choice[24 * 96 + 30], Some(0));
        // Without the still camera, the warp that explains more ranks first.
        let t = choose(&target, &known, &cands(false));
        assert_eq!(t.choice[24 * 96 + 30], Some(1));
    }

    #[test]
    fn a_local_plane_fills_only_where_no_other_candidate_is_trusted() {
        let (target, known, mut a, _) = two_planes();
        let (w, h) = (target.width, target.height);
        // A: the left plane a little brighter (trusted, but less exact than L), valid on the
        // left half only. L (local): shows the target exactly.
        a.data.iter_mut().for_each(|v| *v += 0.03);
        let left_half = Mask { width: w, height: h, data: (0..w * h).map(|i| (i % w < w / 2) as u8 as f32).collect() };
        let all = Mask::new(w, h, 1.0);
        let t = choose(
            &target,
            &known,
            &[
                Candidate { rgb: &target, valid: &all, rank: 0, still: false, corrected: false, local: true },
                Candidate { rgb: &a, valid: &left_half, rank: 0, still: false, corrected: false, local: false },
            ],
        );
        assert!(t.trust[0][32 * 96 + 32] > 0.8, "the local plane is trusted on the left too");
        assert_eq!(t.choice[32 * 96 + 32], Some(1), "left: the plane of the whole photo");
        assert_eq!(t.choice[32 * 96 + 64], Some(0), "right: nothing else is trusted, the local plane");
    }
}
