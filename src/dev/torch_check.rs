//! `realfill torch-check DIR`: does realfill's scene model compute the same function as the
//! PyTorch reference (bench/torch_reference.py)? DIR holds `weights.safetensors` (PyTorch
//! names and layouts, loaded here with burn-store's PyTorch adapter) and `check.safetensors`
//! (a batch, PyTorch's forward output, its learning loss, and its output after one learning
//! step). With `--time`, also times realfill's learning and sampling steps on the same network
//! so that the script can print the ratio to PyTorch's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use clap::Args;

use crate::diffusion::unet::{IN_CHANNELS, TIME_FEATURES, UNet, UNetSpec};
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Args, Debug, Clone)]
pub struct TorchCheckArgs {
    /// Folder written by bench/torch_reference.py.
    pub dir: PathBuf,
    /// Also time the learning and sampling steps (prints a JSON line last).
    #[arg(long)]
    pub time: bool,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub crop: usize,
    #[arg(long, default_value_t = 384)]
    pub width: usize,
    #[arg(long, default_value_t = 288)]
    pub height: usize,
    /// Time only the CPU network (skip burn's steps; for profiling).
    #[arg(long)]
    pub cpu_only: bool,
}

/// Largest differences between realfill and PyTorch, each relative to the reference's scale.
#[derive(Debug)]
pub struct Agreement {
    pub forward: f32,
    pub loss: f32,
    pub after_step: f32,
}

/// Relative tolerance: float32 convolutions summed in different orders differ by ~1e-6
/// relative; a wrong layer (transposed weight, other padding, missing bias) by ~1e-1.
pub const TOLERANCE: f32 = 1e-4;

impl Agreement {
    pub fn passes(&self) -> bool {
        self.forward <= TOLERANCE && self.loss <= TOLERANCE && self.after_step <= 10.0 * TOLERANCE
    }
}

struct Checked {
    tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    spec: UNetSpec,
    lr: f64,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {what}", path.display()))
}

fn read_check(path: &Path) -> Result<Checked> {
    let bytes = crate::input_file::read(path, crate::input_file::TENSORS)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, e))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let field = |k: &str| meta.get(k).ok_or_else(|| bad(path, format!("metadata has no \"{k}\"")));
    let channels = field("channels")?
        .split(',')
        .map(|c| c.trim().parse::<usize>().map_err(|e| bad(path, format!("channels: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let emb_dim = field("emb_dim")?.parse().map_err(|e| bad(path, format!("emb_dim: {e}")))?;
    let lr = field("lr")?.parse().map_err(|e| bad(path, format!("lr: {e}")))?;
    let mut tensors = std::collections::HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(path, format!("tensor {name} is {:?}, expected F32", view.dtype())));
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    Ok(Checked { tensors, spec: UNetSpec { channels, emb_dim }, lr })
}

fn tensor<const D: usize>(c: &Checked, name: &str, device: &Device) -> Result<Tensor<D>> {
    let (shape, data) = c.tensors.get(name).ok_or_else(|| Error::Invalid(format!("check file has no \"{name}\"")))?;
    let shape: [usize; D] =
        shape.clone().try_into().map_err(|_| Error::Invalid(format!("\"{name}\" is not {D}-dimensional")))?;
    Ok(Tensor::from_data(TensorData::new(data.clone(), shape), device))
}

/// Load PyTorch's weights into a fresh realfill UNet; every tensor must be used and none missing.
pub fn load_torch_weights(spec: &UNetSpec, path: &Path, device: &Device) -> Result<UNet> {
    let mut model = UNet::new(spec, device);
    let mut store = SafetensorsStore::from_file(path).with_from_adapter(PyTorchToBurnAdapter);
    let r = model.load_from(&mut store).map_err(|e| bad(path, e))?;
    if !r.missing.is_empty() || !r.unused.is_empty() || !r.errors.is_empty() {
        return Err(bad(
            path,
            format!(
                "weights do not match the network: missing {:?}, unused {:?}, errors {:?}",
                r.missing, r.unused, r.errors
            ),
        ));
    }
    Ok(model)
}

fn max_rel_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    let scale: f32 = b.clone().abs().max().into_scalar();
    let diff: f32 = (a - b).abs().max().into_scalar();
    diff / scale.max(1e-6)
}

fn weighted_loss(pred: Tensor<4>, residual: Tensor<4>, weight: Tensor<4>) -> Tensor<1> {
    // Exactly train::learn's loss.
    let d = pred - residual;
    let wsum = weight.clone().sum().add_scalar(1e-6);
    (d.clone() * d * weight).sum().div(wsum)
}

fn optimizer() -> burn::optim::ModuleOptimizer {
    // Exactly train::learn's optimiser.
    AdamConfig::new().with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0))).init()
}

/// Which implementation of the scene model to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// burn's UNet with autodiff and burn's Adam (every backend).
    Burn,
    /// The hand-written CPU network (`diffusion::cpu_unet`), used on the CPU backend.
    Cpu,
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale.max(1e-6)
}

/// Compare realfill with PyTorch on the files in `dir`.
pub fn check(dir: &Path, which: Implementation) -> Result<(Agreement, UNetSpec)> {
    let device = Device::flex().autodiff();
    let c = read_check(&dir.join("check.safetensors"))?;
    let model = load_torch_weights(&c.spec, &dir.join("weights.safetensors"), &device)?;
    let torch_loss = c.tensors.get("loss").map_or(f32::NAN, |(_, v)| v[0]);
    let loss_diff = |l: f32| (l - torch_loss).abs() / torch_loss.abs().max(1e-6);
    if which == Implementation::Cpu {
        use crate::diffusion::cpu_unet::{CpuUNet, Learner, params_of};
        let get = |name: &str| {
            c.tensors
                .get(name)
                .map(|(s, v)| (s.clone(), v.clone()))
                .ok_or_else(|| Error::Invalid(format!("check file has no \"{name}\"")))
        };
        let ((xs, x), (_, t), (_, y), (_, r), (_, w), (_, ya)) =
            (get("x")?, get("time")?, get("y")?, get("residual")?, get("weight")?, get("y_after")?);
        let (n, h, wd) = (xs[0], xs[2], xs[3]);
        let params = params_of(&model)?;
        let forward = rel(&CpuUNet::new(&c.spec, &params, false).forward(&params, &x, &t, n, h, wd), &y);
        let mut learner = Learner::new(&c.spec, params);
        let loss = learner.step(&x, &t, &r, &w, n, h, wd, c.lr);
        let after = CpuUNet::new(&c.spec, &learner.params, false).forward(&learner.params, &x, &t, n, h, wd);
        let agreement = Agreement { forward, loss: loss_diff(loss), after_step: rel(&after, &ya) };
        return Ok((agreement, c.spec));
    }
    let x = tensor::<4>(&c, "x", &device)?;
    let t = tensor::<2>(&c, "time", &device)?;
    let y = tensor::<4>(&c, "y", &device)?;
    let forward = max_rel_diff(model.forward(x.clone(), t.clone()), y);
    let pred = model.forward(x.clone(), t.clone());
    let loss = weighted_loss(pred, tensor::<4>(&c, "residual", &device)?, tensor::<4>(&c, "weight", &device)?);
    let loss_value: f32 = loss.clone().into_scalar();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optimizer().step(c.lr, model, grads);
    let after_step = max_rel_diff(model.forward(x, t), tensor::<4>(&c, "y_after", &device)?);
    let agreement = Agreement { forward, loss: loss_diff(loss_value), after_step };
    Ok((agreement, c.spec))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median milliseconds of `runs` calls of `step` after `warmup` untimed ones; `prepare` makes
/// each call's input outside the timed part.
fn median_ms<T>(warmup: usize, runs: usize, mut prepare: impl FnMut() -> T, mut step: impl FnMut(T)) -> f64 {
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let input = prepare();
        let t0 = Instant::now();
        step(input);
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    median(times) * 1e3
}

/// Learning step (batch of crops: forward, backward, clipping, Adam) and sampling step (one
/// forward at width×height, read back), medians in ms, on the weights in `dir`.
fn time_steps(a: &TorchCheckArgs, spec: &UNetSpec) -> Result<(f64, f64)> {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    // In an Option so that the timed closure can hand the model to the optimiser and back.
    let mut model = Some(load_torch_weights(spec, &a.dir.join("weights.safetensors"), &ad)?);
    let mut optim = optimizer();
    let mut rng = Rng::new(2);
    let (n, c) = (a.batch, a.crop);
    let learn = median_ms(
        2,
        a.repeats,
        || TimingBatch::new(&mut rng, n, c),
        |TimingBatch { input, residual, weight, time }| {
            let x = Tensor::<4>::from_data(TensorData::new(input, [n, IN_CHANNELS, c, c]), &ad);
            let r = Tensor::<4>::from_data(TensorData::new(residual, [n, 3, c, c]), &ad);
            let w = Tensor::<4>::from_data(TensorData::new(weight, [n, 3, c, c]), &ad);
            let t = Tensor::<2>::from_data(TensorData::new(time, [n, TIME_FEATURES]), &ad);
            let m = model.take().expect("model");
            let loss = weighted_loss(m.forward(x, t), r, w);
            let _: f32 = loss.clone().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            model = Some(optim.step(1e-4, m, grads));
        },
    );
    let inference = model.expect("model").valid();
    let (w, h) = (a.width, a.height);
    let input = rng.normals(IN_CHANNELS * w * h);
    let time = crate::diffusion::unet::time_features(&[500]);
    let sample = median_ms(
        1,
        a.repeats,
        || (),
        |()| {
            let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [1, IN_CHANNELS, h, w]), &device);
            let t = Tensor::<2>::from_data(TensorData::new(time.clone(), [1, TIME_FEATURES]), &device);
            std::hint::black_box(inference.forward(x, t).into_data());
        },
    );
    Ok((learn, sample))
}

/// Random learning inputs for timing (values do not change the work).
struct TimingBatch {
    input: Vec<f32>,
    residual: Vec<f32>,
    weight: Vec<f32>,
    time: Vec<f32>,
}

impl TimingBatch {
    fn new(rng: &mut Rng, n: usize, c: usize) -> TimingBatch {
        TimingBatch {
            input: rng.normals(n * IN_CHANNELS * c * c),
            residual: rng.normals(n * 3 * c * c),
            weight: vec![1.0f32; n * 3 * c * c],
            time: crate::diffusion::unet::time_features(&(0..n).map(|k| 100 * k).collect::<Vec<_>>()),
        }
    }
}

/// The same two steps on the hand-written CPU network (what the CPU backend runs).
fn time_steps_cpu(a: &TorchCheckArgs, spec: &UNetSpec) -> Result<(f64, f64)> {
    use crate::diffusion::cpu_unet::{CpuUNet, Learner, params_of};
    let model = load_torch_weights(spec, &a.dir.join("weights.safetensors"), &Device::flex())?;
    let mut learner = Learner::new(spec, params_of(&model)?);
    let mut rng = Rng::new(2);
    let (n, c) = (a.batch, a.crop);
    let learn = median_ms(
        2,
        a.repeats,
        || TimingBatch::new(&mut rng, n, c),
        |b| {
            learner.step(&b.input, &b.time, &b.residual, &b.weight, n, c, c, 1e-4);
        },
    );
    crate::kernels::profile::report("learning steps");
    let (w, h) = (a.width, a.height);
    let input = rng.normals(IN_CHANNELS * w * h);
    let time = crate::diffusion::unet::time_features(&[500]);
    // Weights packed once, as a fill does (CpuSampler), not per step.
    let net = CpuUNet::new(spec, &learner.params, false);
    let sample = median_ms(
        1,
        a.repeats,
        || (),
        |()| {
            std::hint::black_box(net.forward(&learner.params, &input, &time, 1, h, w));
        },
    );
    crate::kernels::profile::report("sampling steps");
    Ok((learn, sample))
}

pub fn run(a: &TorchCheckArgs) -> Result<()> {
    let mut spec = None;
    for which in [Implementation::Burn, Implementation::Cpu] {
        let (agreement, s) = check(&a.dir, which)?;
        println!(
            "{which:?} vs PyTorch, network {:?} emb {}: forward {:.2e}, loss {:.2e}, after one learning step {:.2e} \
             (largest difference relative to PyTorch's largest value; tolerance {:.0e})",
            s.channels, s.emb_dim, agreement.forward, agreement.loss, agreement.after_step, TOLERANCE
        );
        if !agreement.passes() {
            return Err(Error::Engine(format!("realfill ({which:?}) and PyTorch compute different functions")));
        }
        spec = Some(s);
    }
    println!("equivalence check passed");
    let spec = spec.expect("checked");
    if a.time {
        let (burn_learn, burn_sample) = if a.cpu_only { (f64::NAN, f64::NAN) } else { time_steps(a, &spec)? };
        let (learn_ms, sample_ms) = time_steps_cpu(a, &spec)?;
        println!(
            "{}",
            serde_json::json!({"learn_ms": learn_ms, "sample_ms": sample_ms, "burn_learn_ms": burn_learn,
                "burn_sample_ms": burn_sample, "threads": crate::engine::device::cpu_threads()})
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_reference")
    }

    /// The fixture was written by `bench/torch_reference.sh --fixture tests/fixtures/torch_reference`
    /// (a small network of the same architecture, PyTorch 2.9.1).
    #[test]
    fn realfill_computes_what_pytorch_computes() {
        for which in [Implementation::Burn, Implementation::Cpu] {
            let (a, spec) = check(&fixture(), which).unwrap();
            assert_eq!(spec.channels, vec![8, 16]);
            assert!(a.passes(), "{which:?}: {a:?}");
        }
    }

    #[test]
    fn a_wrong_network_is_noticed() {
        // The same weights loaded into a network that differs in one place (the skip
        // connection missing from the first up block) must not load silently.
        let device = Device::flex();
        let spec = UNetSpec { channels: vec![8, 16, 32], emb_dim: 16 };
        let err = load_torch_weights(&spec, &fixture().join("weights.safetensors"), &device).unwrap_err();
        assert!(err.to_string().contains("weights.safetensors"), "{err}");
    }

    #[test]
    fn other_weights_fail_the_check() {
        // The comparison must be able to fail: the same network with its own random weights.
        let device = Device::flex();
        let c = read_check(&fixture().join("check.safetensors")).unwrap();
        let x = tensor::<4>(&c, "x", &device).unwrap();
        let t = tensor::<2>(&c, "time", &device).unwrap();
        let y = tensor::<4>(&c, "y", &device).unwrap();
        let loaded = load_torch_weights(&c.spec, &fixture().join("weights.safetensors"), &device).unwrap();
        assert!(max_rel_diff(loaded.forward(x.clone(), t.clone()), y.clone()) <= TOLERANCE);
        let other = UNet::new(&c.spec, &device);
        let d = max_rel_diff(other.forward(x, t), y);
        assert!(d > 100.0 * TOLERANCE, "{d}");
    }
}
