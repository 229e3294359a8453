//! Block-wise weight-only quantisation: a layer's weight as codes and one scale per block, the
//! form `realfill quantize` writes and the SD engine keeps resident, widened to floats per layer
//! just before use (`layers`). Plain slices, no burn: the packing is the file format.
//!
//! A weight is seen as PyTorch stores it, `rows` outputs × `cols` inputs (a convolution's
//! input channels and kernel flattened, `cin·k·k`). Each row is cut into blocks of `block`
//! values along the input dimension (the last one shorter when `cols` does not divide), and
//! each block keeps its largest magnitude (`absmax`, f16). Codes:
//! - `Int8`: `round(v / absmax · 127)`, one signed byte each; value = code · absmax / 127.
//! - `Nf4`: the index (0–15) of the nearest of QLoRA's 16 NormalFloat levels (`NF4`, levels of
//!   a unit normal's quantiles, exact 0 and ±1) to `v / absmax`; two per byte, the first in the
//!   high nibble (as bitsandbytes packs), each row starting on a new byte.
//!
//! Codes are made against the f16-rounded absmax, so that widening (code · stored absmax)
//! undoes quantising up to the format's own rounding.

use half::f16;
use rayon::prelude::*;

/// The code formats `realfill quantize` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Int8,
    Nf4,
}

impl Format {
    /// The name in a file's metadata (`realfill.quantization`).
    pub fn tag(self) -> &'static str {
        match self {
            Format::Int8 => "int8",
            Format::Nf4 => "nf4",
        }
    }

    pub fn from_tag(tag: &str) -> Option<Format> {
        match tag {
            "int8" => Some(Format::Int8),
            "nf4" => Some(Format::Nf4),
            _ => None,
        }
    }

    /// How people name it ("4-bit NF4").
    pub fn label(self) -> &'static str {
        match self {
            Format::Int8 => "8-bit int8",
            Format::Nf4 => "4-bit NF4",
        }
    }

    /// Bytes of codes in one row of `cols` values.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            Format::Int8 => cols,
            Format::Nf4 => cols.div_ceil(2),
        }
    }
}

/// What a quantised weight file says about itself (its safetensors metadata): the code format
/// and the block size. `realfill quantize` writes it; `weights::Weights` reads by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scheme {
    pub format: Format,
    pub block: usize,
}

/// The metadata keys of a quantised file.
pub const META_FORMAT: &str = "realfill.quantization";
pub const META_BLOCK: &str = "realfill.block_size";
/// The suffix of a packed weight's block maxima (`….weight.absmax`, f16 [rows, blocks per row]).
pub const ABSMAX: &str = ".absmax";

impl Scheme {
    /// The metadata entries that make a file self-describing.
    pub fn metadata(self) -> Vec<(String, String)> {
        vec![
            (META_FORMAT.into(), self.format.tag().into()),
            (META_BLOCK.into(), self.block.to_string()),
            (
                "realfill.layout".into(),
                "codes per weight under its own name (int8: i8 of its shape; nf4: u8 [rows, ceil(cols/2)], \
                 high nibble first), `<name>.absmax` f16 [rows, ceil(cols/block)]; rows = outputs, \
                 cols = inputs (× kernel)"
                    .into(),
            ),
        ]
    }

    /// The scheme a file's metadata names: `Ok(None)` for a plain file, `Err(problem)` for a
    /// quantised one this build cannot read.
    pub fn from_metadata(meta: Option<&std::collections::HashMap<String, String>>) -> Result<Option<Scheme>, String> {
        let Some(tag) = meta.and_then(|m| m.get(META_FORMAT)) else { return Ok(None) };
        let format = Format::from_tag(tag)
            .ok_or_else(|| format!("is quantised as `{tag}`, which this realfill does not read (int8, nf4)"))?;
        let block = meta
            .and_then(|m| m.get(META_BLOCK))
            .and_then(|b| b.parse::<usize>().ok())
            .filter(|b| (2..=4096).contains(b) && (format == Format::Int8 || b.is_multiple_of(2)))
            .ok_or_else(|| format!("is quantised as {tag} without a valid `{META_BLOCK}`"))?;
        Ok(Some(Scheme { format, block }))
    }

    /// How the fill names it: "4-bit NF4 weights (block 64)".
    pub fn describe(self) -> String {
        format!("{} weights (block {})", self.format.label(), self.block)
    }
}

/// QLoRA's NF4 levels (Dettmers et al. 2023, appendix E; bitsandbytes' table).
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The nearest NF4 level's index for `x` in [−1, 1] (ties to the lower level).
fn nf4_code(x: f32) -> u8 {
    // Midpoints between neighbours: the code is how many of them lie below x.
    let mut code = 0u8;
    for i in 0..15 {
        if x > 0.5 * (NF4[i] + NF4[i + 1]) {
            code += 1;
        }
    }
    code
}

/// One weight, packed.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    pub format: Format,
    pub block: usize,
    pub rows: usize,
    pub cols: usize,
    /// `rows × format.row_bytes(cols)` bytes (int8 codes are `i8` stored as bytes).
    pub codes: Vec<u8>,
    /// `rows × blocks_per_row()` block maxima.
    pub absmax: Vec<f16>,
}

impl Packed {
    pub fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(self.block)
    }

    /// `values` (`rows × cols`, row-major) quantised in blocks of `block` along each row.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: Format, block: usize) -> Packed {
        assert_eq!(values.len(), rows * cols, "values for a {rows}×{cols} weight");
        assert!(block > 0 && (format == Format::Int8 || block.is_multiple_of(2)), "block {block}");
        let rb = format.row_bytes(cols);
        let bpr = cols.div_ceil(block);
        let mut codes = vec![0u8; rows * rb];
        let mut absmax = vec![f16::ZERO; rows * bpr];
        codes.par_chunks_mut(rb.max(1)).zip(absmax.par_chunks_mut(bpr.max(1))).enumerate().for_each(
            |(r, (crow, arow))| {
                let row = &values[r * cols..(r + 1) * cols];
                for (b, chunk) in row.chunks(block).enumerate() {
                    let m = f16::from_f32(chunk.iter().fold(0f32, |m, v| m.max(v.abs())));
                    arow[b] = m;
                    let m = m.to_f32();
                    let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
                    let start = b * block;
                    match format {
                        Format::Int8 => {
                            for (i, v) in chunk.iter().enumerate() {
                                crow[start + i] = ((v * inv * 127.0).round().clamp(-127.0, 127.0) as i8) as u8;
                            }
                        }
                        Format::Nf4 => {
                            // `block` is even, so a block starts on a byte.
                            for (i, v) in chunk.iter().enumerate() {
                                let c = nf4_code((v * inv).clamp(-1.0, 1.0));
                                let byte = &mut crow[(start + i) / 2];
                                *byte |= if (start + i).is_multiple_of(2) { c << 4 } else { c };
                            }
                        }
                    }
                }
            },
        );
        Packed { format, block, rows, cols, codes, absmax }
    }

    /// The weight's values (`rows × cols`) written into `out` through `conv` (f32 → the
    /// layer's float type), rows in parallel.
    pub fn widen_into<T: Copy + Send + Default>(&self, out: &mut [T], conv: impl Fn(f32) -> T + Sync) {
        assert_eq!(out.len(), self.rows * self.cols);
        if self.cols == 0 {
            return;
        }
        let rb = self.format.row_bytes(self.cols);
        let bpr = self.blocks_per_row();
        out.par_chunks_mut(self.cols).enumerate().for_each(|(r, orow)| {
            let crow = &self.codes[r * rb..(r + 1) * rb];
            let arow = &self.absmax[r * bpr..(r + 1) * bpr];
            for (b, ochunk) in orow.chunks_mut(self.block).enumerate() {
                let m = arow[b].to_f32();
                let (start, len) = (b * self.block, ochunk.len());
                match self.format {
                    Format::Int8 => {
                        let s = m / 127.0;
                        for (o, &c) in ochunk.iter_mut().zip(&crow[start..start + len]) {
                            *o = conv(c as i8 as f32 * s);
                        }
                    }
                    Format::Nf4 => {
                        let mut table = [T::default(); 16];
                        for (t, l) in table.iter_mut().zip(NF4) {
                            *t = conv(l * m);
                        }
                        let bytes = &crow[start / 2..(start + len).div_ceil(2)];
                        let mut pairs = ochunk.chunks_exact_mut(2);
                        for (pair, &byte) in (&mut pairs).zip(bytes) {
                            pair[0] = table[(byte >> 4) as usize];
                            pair[1] = table[(byte & 15) as usize];
                        }
                        if let [last] = pairs.into_remainder() {
                            *last = table[(bytes[bytes.len() - 1] >> 4) as usize];
                        }
                    }
                }
            }
        });
    }

    /// The weight's values as f32 (`rows × cols`).
    pub fn widen(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.widen_into(&mut out, |v| v);
        out
    }

    /// The values as `dtype` tensor data of `shape` (f16/bf16 widened straight into that type).
    pub fn widen_data<const D: usize>(
        &self,
        shape: [usize; D],
        dtype: burn::tensor::DType,
    ) -> burn::tensor::TensorData {
        use burn::tensor::{DType, TensorData};
        let n = self.rows * self.cols;
        match dtype {
            DType::F16 => {
                let mut v = vec![f16::ZERO; n];
                self.widen_into(&mut v, f16::from_f32);
                TensorData::new(v, shape)
            }
            DType::BF16 => {
                let mut v = vec![half::bf16::ZERO; n];
                self.widen_into(&mut v, half::bf16::from_f32);
                TensorData::new(v, shape)
            }
            _ => TensorData::new(self.widen(), shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn weight(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        Rng::new(seed).normals(rows * cols).into_iter().map(|v| v * 0.02).collect()
    }

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.iter().map(|x| x.abs()).sum::<f32>()
    }

    /// Every level packs and widens back to itself, in every position of a row whose length
    /// is odd and does not divide by the block (a short last block, a half-filled last byte).
    #[test]
    fn nf4_levels_round_trip_exactly() {
        let (rows, cols) = (3, 37);
        let v: Vec<f32> = (0..rows * cols).map(|i| NF4[(i * 7 + i / cols) % 16] * 0.5).collect();
        // Each block of 16 holds ±0.5 (code 0 or 15) so its absmax is 0.5, exact in f16.
        let mut v = v;
        for r in 0..rows {
            for b in (0..cols).step_by(16) {
                v[r * cols + b] = 0.5;
            }
        }
        let p = Packed::quantize(&v, rows, cols, Format::Nf4, 16);
        assert_eq!(p.codes.len(), rows * 19);
        assert_eq!(p.absmax.len(), rows * 3);
        let back = p.widen();
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= 1e-7 * a.abs().max(1.0), "{a} → {b}");
        }
        // The first value in the high nibble.
        assert_eq!(p.codes[0] >> 4, 15);
    }

    #[test]
    fn int8_codes_round_trip_exactly() {
        let (rows, cols) = (2, 70);
        let v: Vec<f32> = (0..rows * cols).map(|i| ((i as i32 % 255) - 127) as f32 / 127.0 * 0.25).collect();
        let mut v = v;
        for r in 0..rows {
            v[r * cols] = 0.25;
            v[r * cols + 64] = -0.25;
        }
        let p = Packed::quantize(&v, rows, cols, Format::Int8, 64);
        assert_eq!((p.codes.len(), p.absmax.len()), (140, 4));
        for (a, b) in v.iter().zip(p.widen()) {
            assert!((a - b).abs() <= 1e-6, "{a} → {b}");
        }
    }

    /// On normal weights the error is what each format's step implies: int8 ≈ 1 %, NF4 ≈ 9 %
    /// mean relative error, whatever the block's position; an all-zero block stays zero.
    #[test]
    fn normal_weights_keep_their_expected_error() {
        let (rows, cols) = (64, 320 * 9);
        let mut v = weight(rows, cols, 1);
        v[..64].fill(0.0);
        for (format, bound) in [(Format::Int8, 0.015), (Format::Nf4, 0.11)] {
            let p = Packed::quantize(&v, rows, cols, format, 64);
            let back = p.widen();
            assert!(back[..64].iter().all(|&x| x == 0.0));
            let e = rel(&v, &back);
            eprintln!("{format:?}: relative error {e}");
            assert!(e < bound, "{format:?}: {e}");
            assert!(e > bound / 4.0, "{format:?}: {e} (too good: not quantised?)");
        }
    }

    /// Widening straight into f16 gives the f32 values rounded once.
    #[test]
    fn widening_into_half_precision_rounds_the_f32_values() {
        let v = weight(5, 99, 2);
        for format in [Format::Int8, Format::Nf4] {
            let p = Packed::quantize(&v, 5, 99, format, 64);
            let wide = p.widen();
            let mut h = vec![f16::ZERO; 5 * 99];
            p.widen_into(&mut h, f16::from_f32);
            assert!(wide.iter().zip(&h).all(|(a, b)| f16::from_f32(*a) == *b));
        }
    }

    #[test]
    fn nearest_levels() {
        assert_eq!(nf4_code(-1.0), 0);
        assert_eq!(nf4_code(0.0), 7);
        assert_eq!(nf4_code(0.03), 7);
        assert_eq!(nf4_code(0.05), 8);
        assert_eq!(nf4_code(1.0), 15);
        assert_eq!(Format::from_tag(Format::Nf4.tag()), Some(Format::Nf4));
        assert_eq!(Format::from_tag("fp4"), None);
    }
}
