//! The scene model's UNet (unet.rs) on the CPU without burn: forward, backward and Adam by
//! hand on channels-last padded grids, with the direct convolution kernel of `kernels::conv`. Same
//! function and same learning step as the burn version (checked against it and against
//! PyTorch: `torch_check`), several times faster than burn-flex on the CPU
//! (docs/BENCHMARKS.md), whose step is split between gemm, im2col copies, zeroing fresh
//! buffers and scalar `exp` (perf profile).
//!
//! Weights move between the two as safetensors bytes (burn-store), so the burn `UNet` stays
//! the model of record: checkpoints, GPU sampling, and the tests.

use std::collections::HashMap;

use burn::prelude::*;
use burn_store::{ModuleSnapshot, SafetensorsStore};

use super::unet::{IN_CHANNELS, TIME_FEATURES, UNet, UNetSpec};
use crate::error::{Error, Result};
use crate::kernels::conv::{Packed, Source, UpPacked, conv, conv_sum, weight_grad};
use crate::kernels::grid::{self, Grid};
use crate::kernels::norm::{GnStats, gn_silu, gn_silu_backward, silu_vec};
pub use crate::kernels::profile;

/// Named parameters (burn's module paths and layouts: Linear weights [in, out], conv [out, in, k, k]).
#[derive(Clone, Debug)]
pub struct Params {
    pub tensors: HashMap<String, Vec<f32>>,
}

impl Params {
    fn get(&self, name: &str) -> &[f32] {
        self.tensors.get(name).unwrap_or_else(|| panic!("parameter {name} missing"))
    }
}

/// Whether the hand-written network serves this device: the CPU backend (plain or autodiff),
/// when `kernels::plan()` says so.
pub fn serves(device: &Device) -> bool {
    (*device == Device::flex() || *device == Device::flex().autodiff()) && crate::kernels::plan().cpu_network
}

/// The network shape a parameter set belongs to.
pub fn spec_of(p: &Params) -> UNetSpec {
    let channels =
        (0..).map_while(|i| p.tensors.get(&format!("down_blocks.{i}.norm1.gamma")).map(|g| g.len())).collect();
    UNetSpec { channels, emb_dim: p.get("time1.bias").len() }
}

/// Export a burn UNet's parameters.
pub fn params_of(model: &UNet) -> Result<Params> {
    let mut store = SafetensorsStore::from_bytes(None);
    model.save_into(&mut store).map_err(|e| Error::Engine(format!("exporting weights: {e}")))?;
    let bytes = store.get_bytes().map_err(|e| Error::Engine(format!("exporting weights: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Engine(format!("weights: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, data);
    }
    Ok(Params { tensors })
}

/// Write parameters back into a burn UNet (same names and shapes).
pub fn load_params(model: UNet, p: &Params) -> Result<UNet> {
    let mut store = SafetensorsStore::from_bytes(None);
    model.save_into(&mut store).map_err(|e| Error::Engine(format!("weights: {e}")))?;
    let bytes = store.get_bytes().map_err(|e| Error::Engine(format!("weights: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Engine(format!("weights: {e}")))?;
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = p.get(&name).iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, view.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).expect("shape"))
        })
        .collect();
    let out = safetensors::serialize(views, None).map_err(|e| Error::Engine(format!("weights: {e}")))?;
    let mut model = model;
    let mut store = SafetensorsStore::from_bytes(Some(out));
    model.load_from(&mut store).map_err(|e| Error::Engine(format!("importing weights: {e}")))?;
    Ok(model)
}

fn groups(c: usize) -> usize {
    if c.is_multiple_of(8) { 8 } else { 1 }
}

/// y = x·W + b for rows of x (n × din), W din × dout.
fn linear(x: &[f32], n: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let (din, dout) = (x.len() / n, b.len());
    let mut y = vec![0.0f32; n * dout];
    for r in 0..n {
        y[r * dout..(r + 1) * dout].copy_from_slice(b);
        for i in 0..din {
            let xv = x[r * din + i];
            for (o, yv) in y[r * dout..(r + 1) * dout].iter_mut().enumerate() {
                *yv += xv * w[i * dout + o];
            }
        }
    }
    y
}

/// Gradients of `linear`: (dx, dW, db). Loops ordered so that the inner ones run over
/// contiguous rows (dW's row i and W's row i).
fn linear_backward(x: &[f32], n: usize, w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dout = dy.len() / n;
    let din = x.len() / n;
    let (mut dx, mut dw, mut db) = (vec![0.0f32; n * din], vec![0.0f32; din * dout], vec![0.0f32; dout]);
    for r in 0..n {
        let g = &dy[r * dout..(r + 1) * dout];
        for (d, v) in db.iter_mut().zip(g) {
            *d += v;
        }
        for i in 0..din {
            let xv = x[r * din + i];
            let wrow = &w[i * dout..(i + 1) * dout];
            dx[r * din + i] = wrow.iter().zip(g).map(|(a, b)| a * b).sum();
            for (d, v) in dw[i * dout..(i + 1) * dout].iter_mut().zip(g) {
                *d += xv * v;
            }
        }
    }
    (dx, dw, db)
}

fn silu_backward(pre: &[f32], dy: &[f32]) -> Vec<f32> {
    pre.iter()
        .zip(dy)
        .map(|(&u, &g)| {
            let s = 1.0 / (1.0 + (-u).exp());
            g * s * (1.0 + u * (1.0 - s))
        })
        .collect()
}

fn add_into(a: &mut [f32], b: &[f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    a.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).for_each(|(a, b)| {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
    });
}

/// Per-image bias rows: base (c) + extra (n × c).
fn bias_rows(base: &[f32], extra: Option<&[f32]>, n: usize) -> Vec<f32> {
    let c = base.len();
    (0..n).flat_map(|b| (0..c).map(move |o| base[o] + extra.map_or(0.0, |e| e[b * c + o]))).collect()
}

fn sum_rows(rows: &[f32], c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; c];
    for r in rows.chunks(c) {
        add_into(&mut out, r);
    }
    out
}

/// Weights packed once per step (forward and the input-gradient form).
struct ConvW {
    name: String,
    fwd: Packed,
    bwd: Option<Packed>,
    cout: usize,
    cin: usize,
    k: usize,
    stride2: bool,
}

impl ConvW {
    fn new(p: &Params, name: &str, cin: usize, cout: usize, k: usize, stride2: bool, backward: bool) -> ConvW {
        let w = p.get(&format!("{name}.weight"));
        let fwd = if stride2 { Packed::from_oihw_stride2(w, cout, cin) } else { Packed::from_oihw(w, cout, cin, k) };
        let bwd = backward.then(|| fwd.transposed());
        ConvW { name: name.into(), fwd, bwd, cout, cin, k, stride2 }
    }

    fn forward(&self, p: &Params, x: &Grid, extra_bias: Option<&[f32]>) -> Grid {
        let bias = bias_rows(p.get(&format!("{}.bias", self.name)), extra_bias, x.n);
        if profile::enabled() {
            let label: &'static str = Box::leak(
                format!("conv {}x{} {}->{} taps {}", x.h, x.w, self.fwd.cin, self.fwd.cout, self.fwd.taps.len())
                    .into_boxed_str(),
            );
            let gflop = 2.0 * (x.n * x.h * x.w * self.fwd.cin * self.fwd.cout * self.fwd.taps.len()) as f64 / 1e9;
            let t = std::time::Instant::now();
            let out = conv(x, &self.fwd, &bias);
            profile::time(label, || ());
            profile::add_flops(label, gflop, t.elapsed().as_secs_f64());
            return out;
        }
        conv(x, &self.fwd, &bias)
    }

    /// Accumulates dW and db into `grads`; returns the per-image bias gradient and dx.
    fn backward(&self, x: &Grid, dy: &Grid, grads: &mut Params, need_dx: bool) -> (Vec<f32>, Option<Grid>) {
        let (dwp, db_img) = if profile::enabled() {
            let label: &'static str = Box::leak(
                format!("wgrad {}x{} {}->{} taps {}", x.h, x.w, self.fwd.cin, self.fwd.cout, self.fwd.taps.len())
                    .into_boxed_str(),
            );
            profile::time(label, || weight_grad(x, &self.fwd, dy))
        } else {
            weight_grad(x, &self.fwd, dy)
        };
        let dw = if self.stride2 {
            Packed::grad_to_oihw_stride2(&dwp, self.cout, self.cin)
        } else {
            Packed::grad_to_oihw(&dwp, self.cout, self.cin, self.k)
        };
        acc(grads, &format!("{}.weight", self.name), dw);
        acc(grads, &format!("{}.bias", self.name), sum_rows(&db_img, self.cout));
        let dx = need_dx.then(|| {
            let bwd = self.bwd.as_ref().expect("packed for backward");
            profile::time("conv input grad", || conv(dy, bwd, &vec![0.0; dy.n * bwd.cout]))
        });
        (db_img, dx)
    }
}

/// Add a gradient into `grads` (the first one for a name is moved in, not copied).
fn acc(grads: &mut Params, name: &str, g: Vec<f32>) {
    match grads.tensors.get_mut(name) {
        Some(v) => add_into(v, &g),
        None => {
            grads.tensors.insert(name.to_string(), g);
        }
    }
}

/// An up-convolution: 3×3 convolution of the ×2 upsampled input, on the coarse grid.
struct UpConvW {
    name: String,
    up: UpPacked,
}

impl UpConvW {
    fn new(p: &Params, name: &str, cin: usize, cout: usize) -> UpConvW {
        UpConvW { name: name.into(), up: UpPacked::from_oihw(p.get(&format!("{name}.weight")), cout, cin) }
    }

    fn forward(&self, p: &Params, x: &Grid) -> Grid {
        let bias = bias_rows(p.get(&format!("{}.bias", self.name)), None, x.n);
        profile::time("up conv forward", || self.up.forward(x, &bias))
    }

    fn backward(&self, x: &Grid, dy: &Grid, grads: &mut Params) -> Grid {
        let (dw, db_img, dx) = profile::time("up conv backward", || self.up.backward(x, dy));
        acc(grads, &format!("{}.weight", self.name), dw);
        acc(grads, &format!("{}.bias", self.name), sum_rows(&db_img, self.up.cout));
        dx
    }
}

/// GroupNorm (`name`.gamma/.beta, the usual group count) + SiLU, forward.
fn norm_forward(p: &Params, name: &str, x: &Grid) -> (Grid, GnStats) {
    gn_silu(x, p.get(&format!("{name}.gamma")), p.get(&format!("{name}.beta")), groups(x.c))
}

/// Its backward: returns dx and accumulates d(gamma), d(beta) into `grads`.
fn norm_backward(p: &Params, name: &str, x: &Grid, st: &GnStats, dz: &Grid, grads: &mut Params) -> Grid {
    let (gamma, beta) = (format!("{name}.gamma"), format!("{name}.beta"));
    let (dx, dg, db) = gn_silu_backward(x, st, p.get(&gamma), p.get(&beta), groups(x.c), dz);
    acc(grads, &gamma, dg);
    acc(grads, &beta, db);
    dx
}

struct Block {
    name: String,
    cout: usize,
    conv1: ConvW,
    conv2: ConvW,
    skip: Option<ConvW>,
}

struct BlockCache {
    x: Grid,
    st1: GnStats,
    a1: Grid,
    h1: Grid,
    st2: GnStats,
    a2: Grid,
}

impl Block {
    fn new(p: &Params, name: &str, cin: usize, cout: usize, backward: bool) -> Block {
        Block {
            name: name.into(),
            cout,
            conv1: ConvW::new(p, &format!("{name}.conv1"), cin, cout, 3, false, backward),
            conv2: ConvW::new(p, &format!("{name}.conv2"), cout, cout, 3, false, backward),
            skip: (cin != cout).then(|| ConvW::new(p, &format!("{name}.skip"), cin, cout, 1, false, backward)),
        }
    }

    fn forward(&self, p: &Params, x: Grid, emb: &[f32], n: usize) -> (Grid, BlockCache) {
        let e = linear(emb, n, p.get(&format!("{}.emb.weight", self.name)), p.get(&format!("{}.emb.bias", self.name)));
        let (a1, st1) = norm_forward(p, &format!("{}.norm1", self.name), &x);
        let h1 = self.conv1.forward(p, &a1, Some(&e));
        let (a2, st2) = norm_forward(p, &format!("{}.norm2", self.name), &h1);
        // conv2 + skip (or the identity) + both biases in one pass.
        let out = profile::time("conv2+skip", || {
            let mut bias = bias_rows(p.get(&format!("{}.conv2.bias", self.name)), None, n);
            match &self.skip {
                Some(s) => {
                    add_into(&mut bias, &bias_rows(p.get(&format!("{}.bias", s.name)), None, n));
                    conv_sum(&[Source { x: &a2, p: &self.conv2.fwd }, Source { x: &x, p: &s.fwd }], &bias, None)
                }
                None => conv_sum(&[Source { x: &a2, p: &self.conv2.fwd }], &bias, Some(&x)),
            }
        });
        (out, BlockCache { x, st1, a1, h1, st2, a2 })
    }

    /// Returns dx; accumulates parameter gradients and d(emb) (n × emb_dim).
    fn backward(
        &self,
        p: &Params,
        c: &BlockCache,
        dout: &Grid,
        emb: &[f32],
        demb: &mut [f32],
        grads: &mut Params,
    ) -> Grid {
        let n = dout.n;
        let (_, da2) = self.conv2.backward(&c.a2, dout, grads, true);
        let dh1 = norm_backward(p, &format!("{}.norm2", self.name), &c.h1, &c.st2, &da2.expect("dx"), grads);
        let (de, da1) = self.conv1.backward(&c.a1, &dh1, grads, true);
        // The time embedding entered conv1's per-image bias.
        let ew = p.get(&format!("{}.emb.weight", self.name));
        let (dembx, dw, db) = linear_backward(emb, n, ew, &de);
        acc(grads, &format!("{}.emb.weight", self.name), dw);
        acc(grads, &format!("{}.emb.bias", self.name), db);
        add_into(demb, &dembx);
        let mut dx = norm_backward(p, &format!("{}.norm1", self.name), &c.x, &c.st1, &da1.expect("dx"), grads);
        match &self.skip {
            Some(s) => {
                let (_, dxs) = s.backward(&c.x, dout, grads, true);
                add_into(&mut dx.data, &dxs.expect("dx").data);
            }
            None => add_into(&mut dx.data, &dout.data),
        }
        dx
    }
}

/// The network with its weights packed for one step (or for sampling).
pub struct CpuUNet {
    spec: UNetSpec,
    conv_in: ConvW,
    down: Vec<Block>,
    downsample: Vec<ConvW>,
    mid: Block,
    up_convs: Vec<UpConvW>,
    up: Vec<Block>,
    conv_out: ConvW,
}

struct Tape {
    input: Grid,
    time: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    emb: Vec<f32>,
    down: Vec<BlockCache>,
    skips_len: usize,
    ds_in: Vec<Grid>,
    mid: Option<BlockCache>,
    up_in: Vec<Grid>,
    up: Vec<BlockCache>,
    h_out: Grid,
    st_out: GnStats,
    a_out: Grid,
}

impl CpuUNet {
    pub fn new(spec: &UNetSpec, p: &Params, backward: bool) -> CpuUNet {
        use rayon::prelude::*;
        let ch = &spec.channels;
        let l = ch.len();
        // Packing rearranges every weight (≈ 7 ms serially per learning step): in parallel.
        let ((down, downsample), (up, up_convs)) = rayon::join(
            || {
                rayon::join(
                    || {
                        (0..l)
                            .into_par_iter()
                            .map(|i| Block::new(p, &format!("down_blocks.{i}"), ch[i], ch[i], backward))
                            .collect()
                    },
                    || {
                        (0..l - 1)
                            .into_par_iter()
                            .map(|i| ConvW::new(p, &format!("downsamples.{i}"), ch[i], ch[i + 1], 3, true, backward))
                            .collect()
                    },
                )
            },
            || {
                rayon::join(
                    || {
                        (0..l - 1)
                            .into_par_iter()
                            .map(|i| Block::new(p, &format!("up_blocks.{i}"), 2 * ch[i], ch[i], backward))
                            .collect()
                    },
                    || {
                        (0..l - 1)
                            .into_par_iter()
                            .map(|i| UpConvW::new(p, &format!("up_convs.{i}"), ch[i + 1], ch[i]))
                            .collect()
                    },
                )
            },
        );
        CpuUNet {
            spec: spec.clone(),
            conv_in: ConvW::new(p, "conv_in", IN_CHANNELS, ch[0], 3, false, false),
            down,
            downsample,
            mid: Block::new(p, "mid", ch[l - 1], ch[l - 1], backward),
            up_convs,
            up,
            conv_out: ConvW::new(p, "conv_out", ch[0], 3, 3, false, backward),
        }
    }

    /// x: n × 11 × h × w (NCHW), time: n × TIME_FEATURES. Returns n × 3 × h × w.
    pub fn forward(&self, p: &Params, x: &[f32], time: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        on_pool(|| profile::time("sampling forward", || self.run(p, x, time, n, h, w, false).0.to_nchw(3)))
    }

    /// The forward pass; with `keep`, also what the backward pass needs (without, each
    /// block's intermediates are freed as soon as the block is done: sampling at 768 px
    /// would otherwise hold every activation of the network at once).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        p: &Params,
        x: &[f32],
        time: &[f32],
        n: usize,
        h: usize,
        w: usize,
        keep: bool,
    ) -> (Grid, Option<Tape>) {
        assert_eq!(time.len(), n * TIME_FEATURES);
        let stride = self.spec.stride();
        assert!(h.is_multiple_of(stride) && w.is_multiple_of(stride), "sides must divide by {stride}");
        let t1 = linear(time, n, p.get("time1.weight"), p.get("time1.bias"));
        let t2 = linear(&silu_vec(&t1), n, p.get("time2.weight"), p.get("time2.bias"));
        let emb = silu_vec(&t2);
        let input = profile::time("layout copies", || Grid::from_nchw(x, n, IN_CHANNELS, h, w));
        let mut h_ = self.conv_in.forward(p, &input, None);
        let (mut down, mut skips, mut ds_in) = (Vec::new(), Vec::new(), Vec::new());
        for (i, block) in self.down.iter().enumerate() {
            let (o, c) = block.forward(p, h_, &emb, n);
            if keep {
                down.push(c);
            }
            h_ = o;
            if i < self.downsample.len() {
                let s2d = profile::time("layout copies", || h_.space_to_depth());
                skips.push(h_);
                h_ = self.downsample[i].forward(p, &s2d, None);
                if keep {
                    ds_in.push(s2d);
                }
            }
        }
        let (o, mid) = self.mid.forward(p, h_, &emb, n);
        h_ = o;
        let skips_len = skips.len();
        let mut up_in = vec![Grid::zeros(0, 0, 0, 0); self.up.len()];
        let mut up: Vec<Option<BlockCache>> = (0..self.up.len()).map(|_| None).collect();
        for i in (0..self.up.len()).rev() {
            let hc = self.up_convs[i].forward(p, &h_);
            if keep {
                up_in[i] = h_;
            }
            let cat = profile::time("layout copies", || hc.concat(&skips.pop().expect("skip")));
            let (o, c) = self.up[i].forward(p, cat, &emb, n);
            if keep {
                up[i] = Some(c);
            }
            h_ = o;
        }
        let (a_out, st_out) = norm_forward(p, "norm_out", &h_);
        let y = self.conv_out.forward(p, &a_out, None);
        if !keep {
            return (y, None);
        }
        let tape = Tape {
            input,
            time: time.to_vec(),
            t1,
            t2,
            emb,
            down,
            skips_len,
            ds_in,
            mid: Some(mid),
            up_in,
            up: up.into_iter().map(|c| c.expect("cache")).collect(),
            h_out: h_,
            st_out,
            a_out,
        };
        (y, Some(tape))
    }

    /// Loss (train::learn's weighted MSE on the residual) and the gradient of every parameter.
    #[allow(clippy::too_many_arguments, reason = "a batch: inputs, time features, targets, weights, shape")]
    pub fn loss_and_grads(
        &self,
        p: &Params,
        x: &[f32],
        time: &[f32],
        target: &[f32],
        weight: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> (f32, Params) {
        let (y, tape) = self.run(p, x, time, n, h, w, true);
        let tape = tape.expect("kept");
        let pred = y.to_nchw(3);
        let wsum: f64 = weight.iter().map(|&v| v as f64).sum::<f64>() + 1e-6;
        let mut loss = 0.0f64;
        let mut dpred = vec![0.0f32; pred.len()];
        for i in 0..pred.len() {
            let d = (pred[i] - target[i]) as f64;
            loss += d * d * weight[i] as f64;
            dpred[i] = (2.0 * d * weight[i] as f64 / wsum) as f32;
        }
        let grads = self.backward(p, &tape, Grid::from_nchw(&dpred, n, 3, h, w));
        ((loss / wsum) as f32, grads)
    }

    fn backward(&self, p: &Params, tape: &Tape, dy: Grid) -> Params {
        let n = dy.n;
        let mut g = Params { tensors: HashMap::new() };
        let mut demb = vec![0.0f32; tape.emb.len()];
        let (_, da) = self.conv_out.backward(&tape.a_out, &dy, &mut g, true);
        let mut dh = norm_backward(p, "norm_out", &tape.h_out, &tape.st_out, &da.expect("dx"), &mut g);
        let mut dskips: Vec<Option<Grid>> = (0..tape.skips_len).map(|_| None).collect();
        for i in 0..self.up.len() {
            let dcat = self.up[i].backward(p, &tape.up[i], &dh, &tape.emb, &mut demb, &mut g);
            let (dhc, dskip) = profile::time("layout copies", || dcat.split(self.up[i].cout));
            dskips[i] = Some(dskip);
            dh = self.up_convs[i].backward(&tape.up_in[i], &dhc, &mut g);
        }
        dh = self.mid.backward(p, tape.mid.as_ref().expect("mid"), &dh, &tape.emb, &mut demb, &mut g);
        for i in (0..self.down.len()).rev() {
            if i < self.downsample.len() {
                let (_, ds) = self.downsample[i].backward(&tape.ds_in[i], &dh, &mut g, true);
                dh = profile::time("layout copies", || ds.expect("dx").depth_to_space());
                add_into(&mut dh.data, &dskips[i].take().expect("skip gradient").data);
            }
            dh = self.down[i].backward(p, &tape.down[i], &dh, &tape.emb, &mut demb, &mut g);
        }
        // conv_in: weights only (the input needs no gradient).
        self.conv_in.backward(&tape.input, &dh, &mut g, false);
        // Time MLP: emb = silu(t2), t2 = time2(silu(t1)), t1 = time1(time).
        let dt2 = silu_backward(&tape.t2, &demb);
        let s1 = silu_vec(&tape.t1);
        let (ds1, dw2, db2) = linear_backward(&s1, n, p.get("time2.weight"), &dt2);
        acc(&mut g, "time2.weight", dw2);
        acc(&mut g, "time2.bias", db2);
        let dt1 = silu_backward(&tape.t1, &ds1);
        let (_, dw1, db1) = linear_backward(&tape.time, n, p.get("time1.weight"), &dt1);
        acc(&mut g, "time1.weight", dw1);
        acc(&mut g, "time1.bias", db1);
        g
    }
}

/// Run `f` on one of rayon's worker threads. Called from outside the pool, every parallel
/// operation would hand its work to the workers and put the caller to sleep until they are
/// done — two thread switches per operation, hundreds per step (4% of a learning step's
/// samples were in futex wake-ups and the scheduler); from inside, the caller works too.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// Adam's first and second moment of one parameter tensor.
type Moments = (Vec<f32>, Vec<f32>);

/// One learning step on the CPU: the loss, and the parameters after clipping and Adam.
pub struct Learner {
    pub spec: UNetSpec,
    pub params: Params,
    adam: HashMap<String, Moments>,
    step: i32,
}

impl Learner {
    pub fn new(spec: &UNetSpec, params: Params) -> Learner {
        Learner { spec: spec.clone(), params, adam: HashMap::new(), step: 0 }
    }

    /// x: n × 11 × h × w, time: n × 64, target/weight: n × 3 × h × w.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        x: &[f32],
        time: &[f32],
        target: &[f32],
        weight: &[f32],
        n: usize,
        h: usize,
        w: usize,
        lr: f64,
    ) -> f32 {
        on_pool(|| {
            let net = profile::time("pack weights", || CpuUNet::new(&self.spec, &self.params, true));
            let (loss, g) = profile::time("forward+backward", || {
                net.loss_and_grads(&self.params, x, time, target, weight, n, h, w)
            });
            profile::time("adam", || self.adam_step(&g, lr));
            loss
        })
    }

    /// burn's Adam (β 0.9/0.999, ε 1e-5) after per-tensor gradient clipping at norm 1.
    fn adam_step(&mut self, g: &Params, lr: f64) {
        self.step += 1;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-5f32);
        let bc2 = (1.0 - b2.powi(self.step)).sqrt();
        let factor = bc2 / (1.0 - b1.powi(self.step));
        use rayon::prelude::*;
        for name in g.tensors.keys() {
            if !self.adam.contains_key(name) {
                let len = g.tensors[name].len();
                self.adam.insert(name.clone(), (vec![0.0; len], vec![0.0; len]));
            }
        }
        // Each parameter tensor on its own task (they are independent).
        let mut work: Vec<(&Vec<f32>, &mut Vec<f32>, &mut Moments)> = Vec::new();
        let mut params: HashMap<&String, &mut Vec<f32>> = self.params.tensors.iter_mut().collect();
        let mut states: HashMap<&String, &mut Moments> = self.adam.iter_mut().collect();
        for (name, grad) in &g.tensors {
            let p = params.remove(name).unwrap_or_else(|| panic!("gradient of unknown {name}"));
            work.push((grad, p, states.remove(name).expect("state")));
        }
        work.into_par_iter().for_each(|(grad, p, (m, v))| {
            // Sixteen partial sums: a single running sum does not vectorise.
            let mut parts = [0.0f32; 16];
            let chunks = grad.chunks_exact(16);
            let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            for c in chunks {
                for (p, v) in parts.iter_mut().zip(c) {
                    *p += v * v;
                }
            }
            let norm = (parts.iter().sum::<f32>() + tail).sqrt();
            let clip = (1.0 / (norm + f32::MIN_POSITIVE)).min(1.0);
            for i in 0..grad.len() {
                let gi = grad[i] * clip;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] -= lr as f32 * (m[i] * factor) / (v[i].sqrt() + eps * bc2);
            }
        });
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        grid::pool::release();
    }
}

/// Sampling on the CPU: the burn model's weights, packed once.
pub struct CpuSampler {
    params: Params,
    net: CpuUNet,
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        grid::pool::release();
    }
}

impl CpuSampler {
    pub fn new(model: &UNet) -> Result<CpuSampler> {
        let params = params_of(model)?;
        let net = CpuUNet::new(&spec_of(&params), &params, false);
        Ok(CpuSampler { params, net })
    }

    pub fn forward(&self, x: &[f32], time: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        self.net.forward(&self.params, x, time, n, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_forward_and_learning_step_as_burn() {
        // A network with every block kind (skip convs, three levels), random weights, a batch
        // with a partial mask: outputs, losses and the parameters after two steps agree.
        let device = Device::flex().autodiff();
        device.seed(3);
        let spec = UNetSpec { channels: vec![16, 32, 48], emb_dim: 24 };
        let mut model = UNet::new(&spec, &device);
        // conv_out starts at zero; give it weights so the comparison sees every layer.
        let mut p = params_of(&model).unwrap();
        let mut rng = crate::rng::Rng::new(4);
        for v in p.tensors.get_mut("conv_out.weight").unwrap() {
            *v = rng.range_f32(-0.1, 0.1);
        }
        model = load_params(model, &p).unwrap();
        let (n, h, w) = (2, 16, 24);
        let x = rng.normals(n * IN_CHANNELS * h * w);
        let t = crate::diffusion::unet::time_features(&[17, 802]);
        let r = rng.normals(n * 3 * h * w);
        let wt: Vec<f32> = (0..n * 3 * h * w).map(|i| if i % 7 == 0 { 0.0 } else { 1.0 }).collect();
        assert_eq!(spec_of(&p), spec);
        let ours = CpuUNet::new(&spec, &p, false).forward(&p, &x, &t, n, h, w);
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, IN_CHANNELS, h, w]), &device);
        let tt = Tensor::<2>::from_data(TensorData::new(t.clone(), [n, TIME_FEATURES]), &device);
        let theirs = model.forward(xt.clone(), tt.clone()).into_data().try_into_vec::<f32>().unwrap();
        let close = |a: &[f32], b: &[f32], what: &str| {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d <= 2e-4 * scale.max(1e-3), "{what}: largest difference {d} (scale {scale})");
        };
        close(&ours, &theirs, "forward");
        // Two learning steps each way.
        let mut learner = Learner::new(&spec, p);
        let mut optim = burn::optim::AdamConfig::new()
            .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0)))
            .init();
        use burn::optim::GradientsParams;
        for step in 0..2 {
            let l_ours = learner.step(&x, &t, &r, &wt, n, h, w, 1e-3);
            let rv = Tensor::<4>::from_data(TensorData::new(r.clone(), [n, 3, h, w]), &device);
            let wv = Tensor::<4>::from_data(TensorData::new(wt.clone(), [n, 3, h, w]), &device);
            let d = model.forward(xt.clone(), tt.clone()) - rv;
            let wsum = wv.clone().sum().add_scalar(1e-6);
            let loss = (d.clone() * d * wv).sum().div(wsum);
            let l_theirs: f32 = loss.clone().into_scalar();
            assert!((l_ours - l_theirs).abs() <= 1e-4 * l_theirs.abs(), "step {step}: loss {l_ours} vs {l_theirs}");
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
        }
        let after = params_of(&model).unwrap();
        for (name, v) in &after.tensors {
            close(&learner.params.tensors[name], v, name);
        }
    }
}
