//! A network's `*.safetensors` files, memory-mapped, and the layers built from them. Every
//! tensor is looked up by its diffusers/transformers name and checked against the shape the
//! config implies, so a wrong folder fails with the file, the tensor and both shapes named.
//! fp16 and bf16 files are widened to f32 as they load (the CPU backend computes in f32).
//! A `realfill quantize` file (its metadata names the scheme, `packed::Scheme`) keeps its
//! linear and convolution weights packed (`layers`); anything else read from it is widened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, GroupNorm, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::DType;
use memmap2::Mmap;
use safetensors::Dtype;

use super::layers::{Conv, Dense, widen};
use super::packed::{ABSMAX, Format, Packed, Scheme};
use crate::error::{Error, Result};

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// Whether `device` is the CPU (burn's flex backend, with or without autodiff).
pub fn on_cpu(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    /// Per file: how its weights are quantised (`None`: plain floats).
    schemes: Vec<Option<Scheme>>,
    entries: HashMap<String, Entry>,
    pub device: Device,
    /// The float type the layers are built in (f16 keeps a GPU's copy at half the memory).
    pub dtype: DType,
    /// Instead of files: random tensors, made (and recorded) as the networks ask for them.
    synthetic: Option<std::cell::RefCell<Synthetic>>,
    /// Float layer weights are packed this way as they are read (`--sd-precision int8` on the
    /// CPU): held as a `realfill quantize` folder holds them.
    pack: Option<Scheme>,
}

/// Whether a tensor is a layer weight that is held packed: a linear (2-D) or convolution (4-D)
/// weight of 64 values or more. Embedding tables are looked up, not multiplied: they stay as
/// they are.
pub fn packable(name: &str, shape: &[usize]) -> bool {
    name.ends_with(".weight")
        && matches!(shape.len(), 2 | 4)
        && !name.contains("embeddings.")
        && shape.iter().product::<usize>() >= 64
}

/// Random weights for timing a model of a given shape where no weights can be downloaded
/// (`realfill sd-random`): N(0, 1/fan-in) matrices, unit norm scales, zero biases.
struct Synthetic {
    rng: crate::rng::Rng,
    made: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// The weight files of one network folder: all `*.safetensors` of one precision (shards
/// included). f32 files are preferred; `*.fp16.safetensors` are taken when they are all there is.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let list = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::input(dir, "missing: a Stable Diffusion folder in diffusers layout has this folder (see README, \"Stable Diffusion\")")
        } else {
            Error::input(dir, format!("cannot read the folder: {e}"))
        }
    })?;
    let mut all: Vec<PathBuf> = list.filter_map(|e| e.ok().map(|e| e.path())).collect();
    all.sort();
    let st: Vec<PathBuf> = all.iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).cloned().collect();
    let is_half = |p: &PathBuf| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".fp16."));
    let full: Vec<PathBuf> = st.iter().filter(|p| !is_half(p)).cloned().collect();
    let chosen = if full.is_empty() { st } else { full };
    if chosen.is_empty() {
        let bin = all.iter().any(|p| p.extension().is_some_and(|e| e == "bin" || e == "ckpt"));
        return Err(Error::input(
            dir,
            if bin {
                "holds PyTorch .bin/.ckpt weights only; realfill reads .safetensors (download the \
                 .safetensors files of the model, or convert with diffusers' save_pretrained(..., safe_serialization=True))"
            } else {
                "no .safetensors weights in this folder"
            },
        ));
    }
    Ok(chosen)
}

impl Weights {
    /// Maps the weight files of `dir` (see `weight_files`); layers are built in `dtype`.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Weights> {
        Weights::open_files(&weight_files(dir)?, device, dtype)
    }

    pub fn open_files(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Weights> {
        let mut files = Vec::new();
        let mut schemes = Vec::new();
        let mut entries = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let f = crate::input_file::open(path)?;
            // SAFETY: the map is only read, and each tensor's bytes are copied out at load. A file
            // rewritten underneath gives wrong numbers; one truncated while mapped makes the
            // read fault (SIGBUS) — the process stops, no memory is misread. Weights are the
            // person's own download, not expected to change while a fill loads them.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::input(path, format!("cannot map: {e}")))?;
            let (header, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
                Error::input(
                    path,
                    format!("not a valid safetensors file ({e}); it may be truncated: download it again"),
                )
            })?;
            schemes.push(Scheme::from_metadata(meta.metadata().as_ref()).map_err(|p| Error::input(path, p))?);
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if base + e > map.len() {
                    return Err(Error::input(
                        path,
                        "truncated: the file ends before its tensors do; download it again",
                    ));
                }
                entries.insert(
                    name,
                    Entry { file: fi, dtype: info.dtype, shape: info.shape.clone(), start: base + s, end: base + e },
                );
            }
            files.push((path.clone(), map));
        }
        Ok(Weights { files, schemes, entries, device: device.clone(), dtype, synthetic: None, pack: None })
    }

    /// Float layer weights packed by `scheme` as they are read, on the CPU (elsewhere they
    /// would be widened at load again: `on_cpu`); weights a file holds packed stay its own.
    pub fn packing(mut self, scheme: Option<Scheme>) -> Weights {
        self.pack = scheme.filter(|_| self.on_cpu());
        self
    }

    /// `name`'s float values packed by `packing`'s scheme, when it asked for one and the
    /// weight is `packable`.
    fn packed_at_load(&self, name: &str, rows: usize, cols: usize, shape: &[usize]) -> Result<Option<Packed>> {
        let Some(s) = self.pack.filter(|_| packable(name, shape) && self.shape(name) == Some(shape)) else {
            return Ok(None);
        };
        Ok(Some(Packed::quantize(&self.values(name, shape)?, rows, cols, s.format, s.block)))
    }

    /// Random weights (see `Synthetic`), recorded for `made`.
    pub fn synthetic(device: &Device, seed: u64) -> Weights {
        let s = Synthetic { rng: crate::rng::Rng::new(seed), made: Vec::new() };
        Weights {
            files: Vec::new(),
            schemes: Vec::new(),
            entries: HashMap::new(),
            device: device.clone(),
            dtype: DType::F32,
            synthetic: Some(std::cell::RefCell::new(s)),
            pack: None,
        }
    }

    /// The tensors a synthetic source made, in the order they were asked for.
    pub fn made(self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.synthetic.map(|s| s.into_inner().made).unwrap_or_default()
    }

    pub fn has(&self, name: &str) -> bool {
        if self.synthetic.is_some() {
            // diffusers' defaults: attention projections q/k/v without bias in the UNet's
            // transformers, everything else with; current (not legacy) names.
            let unbiased = [".to_q.", ".to_k.", ".to_v."].iter().any(|p| name.contains(p)) && name.contains(".attn");
            let legacy = [".query.", ".key.", ".value.", ".proj_attn."].iter().any(|p| name.contains(p));
            return !(legacy || (unbiased && name.ends_with(".bias")));
        }
        self.entries.contains_key(name)
    }

    /// The file a tensor would be reported against (the first file when it is missing).
    fn file_of(&self, name: &str) -> &Path {
        let i = self.entries.get(name).map_or(0, |e| e.file);
        &self.files[i].0
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// A tensor as stored: its type, shape and bytes (copied out; the pages released).
    pub fn raw(&self, name: &str) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
        let e = self.entries.get(name)?;
        let bytes = self.bytes(e).to_vec();
        self.release(e);
        Some((e.dtype, e.shape.clone(), bytes))
    }

    /// The quantisation of the files' weights, if any (the first quantised file's), else the
    /// one they are packed with as they are read (`packing`).
    pub fn scheme(&self) -> Option<Scheme> {
        self.schemes.iter().flatten().next().copied().or(self.pack)
    }

    /// A tensor's bytes in its file.
    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.files[e.file].1[e.start..e.end]
    }

    /// The file's pages a tensor was read from leave the process (they stay in the page
    /// cache): kept mapped, a network's whole file counts against memory beside its copy
    /// until the load ends (1.7 GB more at the peak of an SD-2 UNet's load).
    fn release(&self, e: &Entry) {
        #[cfg(unix)]
        // SAFETY: `Mmap::map` maps the file shared and read-only; there MADV_DONTNEED only
        // unmaps pages, and a later read (a neighbouring tensor on the same page) faults them
        // back in from the file. No slice of the range is held past this call.
        unsafe {
            let _ = self.files[e.file].1.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                e.start,
                e.end - e.start,
            );
        }
    }

    /// The weight `name` of a quantised file as its codes and block maxima, for a layer of
    /// `rows` outputs and `cols` inputs (× kernel); `None` when the file holds it as floats.
    pub fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<Packed>> {
        let Some(e) = self.entries.get(name) else { return Ok(None) };
        let Some(scheme) = self.schemes[e.file] else { return Ok(None) };
        let code_type = match scheme.format {
            Format::Int8 => Dtype::I8,
            Format::Nf4 => Dtype::U8,
        };
        if e.dtype != code_type {
            return Ok(None);
        }
        let file = &self.files[e.file].0;
        let bad = |what: String| {
            Err(Error::input(
                file,
                format!("{what}: the quantised folder is damaged or not for this config; quantise the model again"),
            ))
        };
        let codes_shape = match scheme.format {
            Format::Int8 => e.shape.iter().product::<usize>() == rows * cols && e.shape.first() == Some(&rows),
            Format::Nf4 => e.shape == [rows, Format::Nf4.row_bytes(cols)],
        };
        if !codes_shape {
            return bad(format!("packed `{name}` has shape {:?}, the config implies {rows} × {cols} values", e.shape));
        }
        let scales = format!("{name}{ABSMAX}");
        let blocks = cols.div_ceil(scheme.block);
        let Some(a) = self.entries.get(&scales) else { return bad(format!("`{name}` has no `{scales}`")) };
        if a.dtype != Dtype::F16 || a.shape != [rows, blocks] {
            return bad(format!("`{scales}` is {:?} {:?}, expected F16 [{rows}, {blocks}]", a.dtype, a.shape));
        }
        let codes = self.bytes(e).to_vec();
        let absmax = self.bytes(a).chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]])).collect();
        self.release(e);
        self.release(a);
        Ok(Some(Packed { format: scheme.format, block: scheme.block, rows, cols, codes, absmax }))
    }

    /// The tensor `name` as f32 values, checked against `shape`.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(s) = &self.synthetic {
            let mut s = s.borrow_mut();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if shape.len() == 1 {
                vec![if name.ends_with(".weight") { 1.0 } else { 0.0 }; n]
            } else {
                let fan_in: usize = shape[1..].iter().product();
                let sd = if name.contains("embedding") { 0.02 } else { 1.0 / (fan_in as f32).sqrt() };
                s.rng.normals(n).into_iter().map(|x| x * sd).collect()
            };
            s.made.push((name.to_string(), shape.to_vec(), v.clone()));
            return Ok(v);
        }
        let Some(e) = self.entries.get(name) else {
            return Err(Error::input(
                self.file_of(name),
                format!("has no tensor `{name}`: the weights do not match the folder's config.json"),
            ));
        };
        if let Some(p) = self.packed(name, shape.first().copied().unwrap_or(1), shape.iter().skip(1).product())? {
            return Ok(p.widen());
        }
        if e.shape != shape {
            return Err(Error::input(
                self.file_of(name),
                format!(
                    "tensor `{name}` has shape {:?}, the folder's config.json implies {shape:?}: weights and config do not belong together",
                    e.shape
                ),
            ));
        }
        let bytes = self.bytes(e);
        let n: usize = shape.iter().product();
        let out: Vec<f32> = match e.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            d => {
                return Err(Error::input(
                    self.file_of(name),
                    format!("tensor `{name}` is {d:?}; realfill reads f32, f16 and bf16 weights"),
                ));
            }
        };
        if out.len() != n {
            return Err(Error::input(self.file_of(name), format!("tensor `{name}` has the wrong byte length")));
        }
        self.release(e);
        Ok(out)
    }

    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let v = self.values(name, &shape)?;
        Ok(Tensor::<D>::from_data(TensorData::new(v, shape), (&self.device, self.dtype)))
    }

    fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>> {
        Ok(Param::from_tensor(self.tensor(name, shape)?))
    }

    fn bias_tensor(&self, prefix: &str, n: usize) -> Result<Option<Tensor<1>>> {
        let name = format!("{prefix}.bias");
        if self.has(&name) { Ok(Some(self.tensor(&name, [n])?)) } else { Ok(None) }
    }

    /// Whether the weights go to the CPU, where a packed weight stays packed and is widened per
    /// call. On a GPU or a remote device (`realfill serve`) that would send every layer's
    /// float weight on every step (a 25-step guided SD-2 fill: ≈ 43 GB), so there it is
    /// widened once here.
    fn on_cpu(&self) -> bool {
        on_cpu(&self.device)
    }

    /// A PyTorch `Linear(din, dout)` (weight [dout, din]); its bias when the file has one.
    /// Also reads the 1×1-convolution layout old VAE attention weights were saved in.
    pub fn linear(&self, prefix: &str, din: usize, dout: usize) -> Result<Dense> {
        let name = format!("{prefix}.weight");
        if let Some(p) = self.packed(&name, dout, din)? {
            let bias = self.bias_tensor(prefix, dout)?;
            if !self.on_cpu() {
                return Ok(Dense::new(widen(&p, [dout, din], self.dtype, &self.device).transpose(), bias));
            }
            return Ok(Dense::from_packed(p, bias));
        }
        if let Some(p) = self.packed_at_load(&name, dout, din, &[dout, din])? {
            return Ok(Dense::from_packed(p, self.bias_tensor(prefix, dout)?));
        }
        let w = if self.shape(&name).is_some_and(|s| s.len() == 4) {
            self.tensor::<4>(&name, [dout, din, 1, 1])?.reshape([dout, din])
        } else {
            self.tensor::<2>(&name, [dout, din])?
        };
        Ok(Dense::new(w.transpose(), self.bias_tensor(prefix, dout)?))
    }

    /// A square `k`×`k` convolution with `pad` on every side.
    pub fn conv(&self, prefix: &str, cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Result<Conv> {
        let name = format!("{prefix}.weight");
        let bias = self.bias_tensor(prefix, cout)?;
        if let Some(p) = self.packed(&name, cout, cin * k * k)? {
            if !self.on_cpu() {
                return Ok(Conv::new(widen(&p, [cout, cin, k, k], self.dtype, &self.device), bias, stride, pad));
            }
            return Ok(Conv::from_packed(p, cin, k, bias, stride, pad));
        }
        if let Some(p) = self.packed_at_load(&name, cout, cin * k * k, &[cout, cin, k, k])? {
            return Ok(Conv::from_packed(p, cin, k, bias, stride, pad));
        }
        Ok(Conv::new(self.tensor(&name, [cout, cin, k, k])?, bias, stride, pad))
    }

    pub fn group_norm(&self, prefix: &str, groups: usize, c: usize, eps: f64) -> Result<GroupNorm> {
        Ok(GroupNorm {
            gamma: Some(self.param(&format!("{prefix}.weight"), [c])?),
            beta: Some(self.param(&format!("{prefix}.bias"), [c])?),
            num_groups: groups,
            num_channels: c,
            epsilon: eps,
            affine: true,
        })
    }

    pub fn layer_norm(&self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        ln.gamma = self.param(&format!("{prefix}.weight"), [d])?;
        ln.beta = Some(self.param(&format!("{prefix}.bias"), [d])?);
        Ok(ln)
    }

    pub fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding> {
        Ok(Embedding { weight: self.param(name, [n, d])? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("realfill-sdw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn save(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn half_files_widen_and_shapes_are_checked() {
        let d = dir("half");
        let vals = [1.5f32, -2.0, 0.25, 3.0, 0.0, -1.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        save(&d.join("model.fp16.safetensors"), &[("l.weight", Dtype::F16, vec![2, 3], bytes)]);
        let w = Weights::open(&d, &Device::flex(), DType::F32).unwrap();
        let lin = w.linear("l", 3, 2).unwrap();
        assert!(lin.bias.is_none());
        let y = lin.forward(Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0, 1.0], [1, 3]), &w.device));
        assert_eq!(y.into_data().try_into_vec::<f32>().unwrap(), vec![-0.25, 2.0]);
        let e = w.linear("l", 2, 3).unwrap_err().to_string();
        assert!(e.contains("model.fp16.safetensors") && e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
        let e = w.linear("missing", 2, 3).unwrap_err().to_string();
        assert!(e.contains("`missing.weight`"), "{e}");
    }

    #[test]
    fn truncated_files_and_bin_only_folders_are_named() {
        let d = dir("trunc");
        save(&d.join("a.safetensors"), &[("x", Dtype::F32, vec![4], vec![0u8; 16])]);
        let bytes = std::fs::read(d.join("a.safetensors")).unwrap();
        std::fs::write(d.join("a.safetensors"), &bytes[..bytes.len() - 5]).unwrap();
        let e = Weights::open(&d, &Device::flex(), DType::F32).err().unwrap().to_string();
        assert!(e.contains("a.safetensors") && e.contains("truncated"), "{e}");
        let d = dir("bin");
        std::fs::write(d.join("diffusion_pytorch_model.bin"), b"x").unwrap();
        let e = Weights::open(&d, &Device::flex(), DType::F32).err().unwrap().to_string();
        assert!(e.contains(".safetensors") && e.contains(".bin"), "{e}");
    }
}
