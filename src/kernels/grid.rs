//! Activations for the CPU scene model: channels-last images with a one-pixel zero border
//! ("padded grids"). With the border in memory, a 3×3 convolution needs no bounds checks:
//! the tap (dy, dx) of position q is position q + dy·(w+2) + dx of the same flat array, so
//! every convolution is one kernel over a contiguous range of positions.

/// n images of h×w positions (stored as (h+2)×(w+2), border zero) × c channels.
#[derive(Debug)]
pub struct Grid {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

/// Recycled buffers: a step allocates and frees dozens of activation-sized buffers, and
/// fresh ones from the system cost a page fault per 4 KiB on first touch (visible in `perf`
/// profiles of the step). Freed grids return their buffers here; new grids reuse them (the
/// gain is measured in docs/BENCHMARKS.md).
pub mod pool {
    use std::sync::Mutex;

    static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
    /// Keep at most this many floats (256 MiB) idle, counted by capacity: a reused buffer is
    /// shortened, not shrunk, and counting lengths let the pool hold twice its limit (at 512
    /// MiB counted, a Stable Diffusion fill in f16 peaked at 4.1 GB instead of 3.2; session 18).
    const LIMIT: usize = 1 << 26;

    /// A buffer of `len` floats, zeroed.
    pub fn take(len: usize) -> Vec<f32> {
        let mut v = take_dirty(len);
        v.fill(0.0);
        v
    }

    /// A buffer of `len` floats holding whatever it held before.
    pub fn take_dirty(len: usize) -> Vec<f32> {
        let found = {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            // Smallest buffer that fits, and not more than twice too big.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len && v.capacity() <= 2 * len.max(1024))
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        match found {
            Some(mut v) => {
                // Within its capacity: no reallocation; only a grown tail is written.
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    v.resize(len, 0.0);
                }
                v
            }
            None => vec![0.0; len],
        }
    }

    /// Return every idle buffer to the system (after a job: the app should not sit on them).
    pub fn release() {
        FREE.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn give(v: Vec<f32>) {
        if v.len() < 4096 {
            return;
        }
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        free.push(v);
        while free.iter().map(|v| v.capacity()).sum::<usize>() > LIMIT {
            free.remove(0);
        }
    }
}

impl Clone for Grid {
    fn clone(&self) -> Grid {
        let mut g = Grid::zeros(self.n, self.h, self.w, self.c);
        g.data.copy_from_slice(&self.data);
        g
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.data));
    }
}

impl Grid {
    pub fn zeros(n: usize, h: usize, w: usize, c: usize) -> Grid {
        Grid { n, h, w, c, data: pool::take(n * (h + 2) * (w + 2) * c) }
    }

    /// A grid whose border rows are zero and whose other positions the caller overwrites
    /// (then calls `zero_side_borders`): skips zeroing buffers that are written anyway.
    pub fn for_overwrite(n: usize, h: usize, w: usize, c: usize) -> Grid {
        let mut g = Grid { n, h, w, c, data: pool::take_dirty(n * (h + 2) * (w + 2) * c) };
        let row = g.wp() * c;
        for b in 0..n {
            let top = b * (h + 2) * row;
            g.data[top..top + row].fill(0.0);
            let bottom = top + (h + 1) * row;
            g.data[bottom..bottom + row].fill(0.0);
        }
        g
    }

    /// Row length in positions (with the border).
    pub fn wp(&self) -> usize {
        self.w + 2
    }

    /// Flat position of interior pixel (x, y) of image b.
    pub fn pos(&self, b: usize, y: usize, x: usize) -> usize {
        (b * (self.h + 2) + y + 1) * self.wp() + x + 1
    }

    /// The positions of image b's interior rows, border columns included: [start, end).
    pub fn rows_range(&self, b: usize) -> (usize, usize) {
        let start = (b * (self.h + 2) + 1) * self.wp();
        (start, start + self.h * self.wp())
    }

    /// Zero the left and right border columns (convolutions write garbage there).
    pub fn zero_side_borders(&mut self) {
        let (wp, c) = (self.wp(), self.c);
        for b in 0..self.n {
            for y in 0..self.h {
                let row = (b * (self.h + 2) + y + 1) * wp;
                self.data[row * c..(row + 1) * c].fill(0.0);
                self.data[(row + wp - 1) * c..(row + wp) * c].fill(0.0);
            }
        }
    }

    /// Zero every border position: the top and bottom rows of each image and the side columns
    /// (a product over a whole range of positions writes the rows between images too).
    pub fn zero_borders(&mut self) {
        let row = self.wp() * self.c;
        for b in 0..self.n {
            let top = b * (self.h + 2) * row;
            self.data[top..top + row].fill(0.0);
            let bottom = top + (self.h + 1) * row;
            self.data[bottom..bottom + row].fill(0.0);
        }
        self.zero_side_borders();
    }

    /// The interior pixels as dense rows (n·h·w × c, row-major): tokens for attention.
    pub fn interior(&self) -> Vec<f32> {
        use rayon::prelude::*;
        let (h, w, c) = (self.h, self.w, self.c);
        let mut out = vec![0.0f32; self.n * h * w * c];
        out.par_chunks_mut(w * c).enumerate().for_each(|(r, dst)| {
            let p = self.pos(r / h, r % h, 0);
            dst.copy_from_slice(&self.data[p * c..(p + w) * c]);
        });
        out
    }

    /// A grid of n images of h×w from dense rows (`interior`'s layout), plus `residual` when given.
    pub fn from_interior(rows: &[f32], n: usize, h: usize, w: usize, c: usize, residual: Option<&Grid>) -> Grid {
        assert_eq!(rows.len(), n * h * w * c, "dense rows of the grid");
        if let Some(r) = residual {
            assert_eq!((r.n, r.h, r.w, r.c), (n, h, w, c), "residual shape");
        }
        let mut g = Grid::for_overwrite(n, h, w, c);
        g.fill_pixels(|b, y, x, px| {
            let src = &rows[((b * h + y) * w + x) * c..][..c];
            match residual {
                Some(r) => {
                    let p = r.pos(b, y, x);
                    for ((o, a), b) in px.iter_mut().zip(src).zip(&r.data[p * c..(p + 1) * c]) {
                        *o = a + b;
                    }
                }
                None => px.copy_from_slice(src),
            }
        });
        g.zero_side_borders();
        g
    }

    /// Fill every interior pixel of `self` in parallel over rows: f(image, y, x, pixel).
    fn fill_pixels(&mut self, f: impl Fn(usize, usize, usize, &mut [f32]) + Sync) {
        use rayon::prelude::*;
        let (h, w, c, wp) = (self.h, self.w, self.c, self.wp());
        let hp = h + 2;
        self.data.par_chunks_mut(wp * c).enumerate().for_each(|(row, data)| {
            let (b, y) = (row / hp, row % hp);
            if y == 0 || y == hp - 1 {
                return;
            }
            for x in 0..w {
                f(b, y - 1, x, &mut data[(x + 1) * c..(x + 2) * c]);
            }
        });
    }

    /// From NCHW planes.
    pub fn from_nchw(src: &[f32], n: usize, c: usize, h: usize, w: usize) -> Grid {
        let mut g = Grid::for_overwrite(n, h, w, c);
        g.fill_pixels(|b, y, x, px| {
            for (ch, v) in px.iter_mut().enumerate() {
                *v = src[((b * c + ch) * h + y) * w + x];
            }
        });
        g.zero_side_borders();
        g
    }

    /// To NCHW planes (the first `c` channels).
    pub fn to_nchw(&self, c: usize) -> Vec<f32> {
        let (n, h, w) = (self.n, self.h, self.w);
        let mut out = vec![0.0; n * c * h * w];
        for b in 0..n {
            for y in 0..h {
                for x in 0..w {
                    let p = self.pos(b, y, x);
                    for ch in 0..c {
                        out[((b * c + ch) * h + y) * w + x] = self.data[p * self.c + ch];
                    }
                }
            }
        }
        out
    }

    /// Concatenate channels: [self, other] per pixel.
    pub fn concat(&self, other: &Grid) -> Grid {
        assert_eq!((self.n, self.h, self.w), (other.n, other.h, other.w));
        let (c1, c2) = (self.c, other.c);
        let mut out = Grid::for_overwrite(self.n, self.h, self.w, c1 + c2);
        out.fill_pixels(|b, y, x, px| {
            let (p1, p2) = (self.pos(b, y, x), other.pos(b, y, x));
            px[..c1].copy_from_slice(&self.data[p1 * c1..(p1 + 1) * c1]);
            px[c1..].copy_from_slice(&other.data[p2 * c2..(p2 + 1) * c2]);
        });
        out.zero_side_borders();
        out
    }

    /// Split channels [0, c1) and [c1, c).
    pub fn split(&self, c1: usize) -> (Grid, Grid) {
        let (c, c2) = (self.c, self.c - c1);
        let mut a = Grid::for_overwrite(self.n, self.h, self.w, c1);
        let mut b = Grid::for_overwrite(self.n, self.h, self.w, c2);
        a.fill_pixels(|bi, y, x, px| {
            let p = self.pos(bi, y, x);
            px.copy_from_slice(&self.data[p * c..p * c + c1]);
        });
        b.fill_pixels(|bi, y, x, px| {
            let p = self.pos(bi, y, x);
            px.copy_from_slice(&self.data[p * c + c1..(p + 1) * c]);
        });
        a.zero_side_borders();
        b.zero_side_borders();
        (a, b)
    }

    /// Nearest-neighbour ×2 upsampling (the reference the phase up-convolution is tested
    /// against; the network never materialises it).
    #[cfg(test)]
    pub fn upsample2(&self) -> Grid {
        let c = self.c;
        let mut out = Grid::zeros(self.n, 2 * self.h, 2 * self.w, c);
        for b in 0..self.n {
            for y in 0..2 * self.h {
                for x in 0..2 * self.w {
                    let (po, pi) = (out.pos(b, y, x), self.pos(b, y / 2, x / 2));
                    out.data[po * c..(po + 1) * c].copy_from_slice(&self.data[pi * c..(pi + 1) * c]);
                }
            }
        }
        out
    }

    /// Gradient of `upsample2`: each source pixel collects its four copies.
    #[cfg(test)]
    pub fn upsample2_backward(&self) -> Grid {
        let c = self.c;
        let mut out = Grid::zeros(self.n, self.h / 2, self.w / 2, c);
        for b in 0..self.n {
            for y in 0..self.h {
                for x in 0..self.w {
                    let (pi, po) = (self.pos(b, y, x), out.pos(b, y / 2, x / 2));
                    for ch in 0..c {
                        out.data[po * c + ch] += self.data[pi * c + ch];
                    }
                }
            }
        }
        out
    }

    /// Four phase grids (py·2+px) of one size into one grid of twice the size.
    pub fn interleave(phases: &[Grid]) -> Grid {
        let g = &phases[0];
        let c = g.c;
        let mut out = Grid::for_overwrite(g.n, 2 * g.h, 2 * g.w, c);
        out.fill_pixels(|b, y, x, px| {
            let src = &phases[(y % 2) * 2 + x % 2];
            let pi = src.pos(b, y / 2, x / 2);
            px.copy_from_slice(&src.data[pi * c..(pi + 1) * c]);
        });
        out.zero_side_borders();
        out
    }

    /// Inverse of `interleave`.
    pub fn deinterleave(&self) -> Vec<Grid> {
        let c = self.c;
        (0..4)
            .map(|ph| {
                let (py, px0) = (ph / 2, ph % 2);
                let mut g = Grid::for_overwrite(self.n, self.h / 2, self.w / 2, c);
                g.fill_pixels(|b, y, x, px| {
                    let pi = self.pos(b, 2 * y + py, 2 * x + px0);
                    px.copy_from_slice(&self.data[pi * c..(pi + 1) * c]);
                });
                g.zero_side_borders();
                g
            })
            .collect()
    }

    /// Space to depth: 2×2 blocks become 4c channels ordered (py, px, channel).
    pub fn space_to_depth(&self) -> Grid {
        let c = self.c;
        let mut out = Grid::for_overwrite(self.n, self.h / 2, self.w / 2, 4 * c);
        out.fill_pixels(|b, y, x, px| {
            for k in 0..4 {
                let pi = self.pos(b, 2 * y + k / 2, 2 * x + k % 2);
                px[k * c..(k + 1) * c].copy_from_slice(&self.data[pi * c..(pi + 1) * c]);
            }
        });
        out.zero_side_borders();
        out
    }

    /// Inverse of `space_to_depth`.
    pub fn depth_to_space(&self) -> Grid {
        let c = self.c / 4;
        let mut out = Grid::for_overwrite(self.n, 2 * self.h, 2 * self.w, c);
        out.fill_pixels(|b, y, x, px| {
            let pi = self.pos(b, y / 2, x / 2);
            let k = (y % 2) * 2 + x % 2;
            px.copy_from_slice(&self.data[pi * 4 * c + k * c..pi * 4 * c + (k + 1) * c]);
        });
        out.zero_side_borders();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let (n, c, h, w) = (2, 3, 4, 6);
        let src: Vec<f32> = (0..n * c * h * w).map(|i| i as f32).collect();
        let g = Grid::from_nchw(&src, n, c, h, w);
        assert_eq!(g.to_nchw(c), src);
        assert_eq!(g.space_to_depth().depth_to_space().data, g.data);
        let (a, b) = g.concat(&g.upsample2().upsample2_backward()).split(c);
        assert_eq!(a.data, g.data);
        assert!(b.data.iter().zip(&g.data).all(|(x, y)| *x == 4.0 * y), "four copies collected");
        // Borders stay zero.
        assert_eq!(g.data[..g.wp() * c].iter().filter(|v| **v != 0.0).count(), 0);
    }
}
