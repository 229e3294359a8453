//! `realfill quantize --model DIR --bits 4|8 --out DIR`: a complete Stable Diffusion folder
//! whose UNet and text encoder hold their linear and convolution weights block-wise quantised
//! (`packed`: int8, or 4-bit NF4 codes two per byte; one f16 absmax per block along the input
//! dimension), made once and loaded by the SD engine like any other folder (`weights::Weights`
//! reads the scheme from each file's metadata). Everything else — biases, norms, embeddings,
//! the VAE, configs, tokenizer, scheduler — is copied as it is.

use std::path::{Path, PathBuf};

use safetensors::Dtype;

use super::packed::{ABSMAX, Format, Packed, Scheme};
use super::weights::{Weights, packable, weight_files};
use crate::error::{Error, Result};

/// The networks quantised, and the file each is written to.
const NETWORKS: [(&str, &str); 2] =
    [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")];

/// What one network's quantisation did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkReport {
    pub name: String,
    /// Weights packed, and their values.
    pub packed: usize,
    pub packed_values: usize,
    /// Tensors copied as they were.
    pub kept: usize,
    /// Bytes of the network's weights in the source folder and in the written one.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The quantisation scheme of the folder `dir`'s UNet, if its files say one (`None`: floats).
pub fn folder_scheme(dir: &Path) -> Result<Option<Scheme>> {
    let w = Weights::open(&dir.join("unet"), &burn::prelude::Device::flex(), burn::tensor::DType::F32)?;
    Ok(w.scheme())
}

/// Writes the quantised copy of `model` to `out` (which must not exist); `progress` hears of
/// each network as it is done. On failure nothing is left at `out`.
pub fn quantize_folder(
    model: &Path,
    out: &Path,
    scheme: Scheme,
    progress: &mut dyn FnMut(&NetworkReport),
) -> Result<Vec<NetworkReport>> {
    if !model.is_dir() {
        return Err(Error::input(model, format!("not a folder; {}", super::HELP)));
    }
    for (net, _) in NETWORKS {
        let dir = model.join(net);
        let w = Weights::open(&dir, &burn::prelude::Device::flex(), burn::tensor::DType::F32)?;
        if let Some(s) = w.scheme() {
            return Err(Error::input(
                &dir,
                format!("is already quantised ({}); quantise the original model folder", s.describe()),
            ));
        }
    }
    super::config::UNetConfig::read(&model.join("unet").join("config.json"))?;
    super::config::TextConfig::read(&model.join("text_encoder").join("config.json"))?;
    if !matches!(std::fs::symlink_metadata(out), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        return Err(Error::output(out, "already exists; name a new folder for the quantised model"));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let (Ok(m), Ok(p)) = (model.canonicalize(), parent.canonicalize())
        && p.starts_with(&m)
    {
        return Err(Error::output(out, "is inside the model folder; write the quantised model beside it"));
    }
    std::fs::create_dir(out).map_err(|e| Error::output(out, format!("cannot create the folder: {e}")))?;
    let written = write_all(model, out, scheme, progress);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(out);
    }
    written
}

fn write_all(
    model: &Path,
    out: &Path,
    scheme: Scheme,
    progress: &mut dyn FnMut(&NetworkReport),
) -> Result<Vec<NetworkReport>> {
    copy_tree(model, out, model, &mut Vec::new())?;
    let mut reports = Vec::new();
    for (net, file) in NETWORKS {
        let r = quantize_network(&model.join(net), &out.join(net).join(file), net, scheme)?;
        progress(&r);
        reports.push(r);
    }
    Ok(reports)
}

/// Whether `path` (under `root`) is a weight file of a network `quantize` rewrites.
fn replaced(root: &Path, path: &Path) -> bool {
    let in_net = NETWORKS.iter().any(|(n, _)| path.parent() == Some(&root.join(n)));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    in_net
        && [".safetensors", ".bin", ".ckpt", ".safetensors.index.json", ".bin.index.json"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Copies `dir` (under `root`) into `out`, but for the weight files `quantize` rewrites.
/// `open`: the folders being copied, from `root` down to `dir`'s parent, as their real paths.
fn copy_tree(dir: &Path, out: &Path, root: &Path, open: &mut Vec<PathBuf>) -> Result<()> {
    // A link back to a folder being copied (`vae/up -> ..`) would copy the model into itself
    // until the path is too long — forty copies of 5 GB, where the disk is full long before:
    // such a folder is already in the copy, and is not entered again.
    let real = dir.canonicalize().map_err(|e| Error::input(dir, format!("cannot read the folder: {e}")))?;
    if open.contains(&real) {
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| Error::output(out, format!("cannot create the folder: {e}")))?;
    let list = std::fs::read_dir(dir).map_err(|e| Error::input(dir, format!("cannot read the folder: {e}")))?;
    let mut entries: Vec<PathBuf> = list.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name() else { continue };
        let target = out.join(name);
        // Followed, as the Hugging Face cache's links to its blobs must be.
        let meta = std::fs::metadata(&path).map_err(|e| Error::input(&path, format!("cannot read: {e}")))?;
        if meta.is_dir() {
            open.push(real.clone());
            let copied = copy_tree(&path, &target, root, open);
            open.pop();
            copied?;
        } else if meta.is_file() && !replaced(root, &path) {
            std::fs::copy(&path, &target)
                .map_err(|e| Error::output(&target, format!("cannot copy {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// One network's weights, packed where `packable`, into one safetensors file at `path`.
fn quantize_network(dir: &Path, path: &Path, net: &str, scheme: Scheme) -> Result<NetworkReport> {
    let device = burn::prelude::Device::flex();
    let w = Weights::open(dir, &device, burn::tensor::DType::F32)?;
    let mut report = NetworkReport { name: net.to_string(), ..Default::default() };
    report.bytes_before = weight_files(dir)?.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in w.names() {
        let shape = w.shape(&name).map(|s| s.to_vec()).unwrap_or_default();
        if !packable(&name, &shape) {
            if let Some((dtype, shape, bytes)) = w.raw(&name) {
                tensors.push((name, dtype, shape, bytes));
                report.kept += 1;
            }
            continue;
        }
        let (rows, cols) = (shape[0], shape[1..].iter().product::<usize>());
        let p = Packed::quantize(&w.values(&name, &shape)?, rows, cols, scheme.format, scheme.block);
        let (dtype, code_shape) = match scheme.format {
            Format::Int8 => (Dtype::I8, shape.clone()),
            Format::Nf4 => (Dtype::U8, vec![rows, Format::Nf4.row_bytes(cols)]),
        };
        report.packed += 1;
        report.packed_values += rows * cols;
        let scales: Vec<u8> = p.absmax.iter().flat_map(|a| a.to_le_bytes()).collect();
        tensors.push((format!("{name}{ABSMAX}"), Dtype::F16, vec![rows, p.blocks_per_row()], scales));
        tensors.push((name, dtype, code_shape, p.codes));
    }
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Engine(format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta: std::collections::HashMap<String, String> = scheme.metadata().into_iter().collect();
    meta.insert("format".into(), "pt".into());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Engine(e.to_string()))?;
    drop(tensors);
    crate::scene::io::write_atomic(path, &bytes)?;
    report.bytes_after = bytes.len() as u64;
    Ok(report)
}

/// The scheme for `--bits`: 8 → int8, 4 → NF4.
pub fn scheme_for_bits(bits: u8, block: usize) -> Option<Scheme> {
    let format = match bits {
        8 => Format::Int8,
        4 => Format::Nf4,
        _ => return None,
    };
    Some(Scheme { format, block })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::sd::StableDiffusion;
    use burn::prelude::*;
    use burn::tensor::DType;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny")
    }

    fn fresh(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("realfill-quantize-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The written folder is complete and self-describing: configs, tokenizer, scheduler and
    /// VAE copied; the UNet and text encoder packed (their metadata says how) and loaded packed.
    #[test]
    fn a_quantised_folder_is_complete_and_loads_packed() {
        let out = fresh("complete");
        let scheme = Scheme { format: Format::Nf4, block: 64 };
        let mut heard = Vec::new();
        let reports = quantize_folder(&fixture(), &out, scheme, &mut |r| heard.push(r.name.clone())).unwrap();
        assert_eq!(heard, ["unet", "text_encoder"]);
        for r in &reports {
            assert!(r.packed > 0 && r.bytes_after < r.bytes_before, "{r:?}");
        }
        for f in ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "vae/config.json"] {
            assert!(out.join(f).is_file(), "{f}");
        }
        assert!(!out.join("unet/diffusion_pytorch_model.fp16.safetensors").exists());
        assert_eq!(folder_scheme(&out).unwrap(), Some(scheme));
        assert_eq!(folder_scheme(&fixture()).unwrap(), None);
        let sd = StableDiffusion::load(&out, &Device::flex(), DType::F32).unwrap();
        assert_eq!((sd.unet.scheme, sd.text_scheme), (Some(scheme), Some(scheme)));
        assert!(sd.describe_weights().contains("UNet: 4-bit NF4 weights (block 64)"), "{}", sd.describe_weights());
        let _ = std::fs::remove_dir_all(&out);
    }

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.iter().map(|x| x.abs()).sum::<f32>()
    }

    /// The UNet's output at a `side`² latent (batch 1, t = 300, the prompt "a photo"; one
    /// text encoding for both, the f32 folder's) for the folder `dir`, computed in f32.
    fn unet_out(dir: &Path, reference: &Path, side: usize) -> Vec<f32> {
        let device = Device::flex();
        let (unet, _) = crate::diffusion::sd::unet::UNet::load(&dir.join("unet"), &device, DType::F32).unwrap();
        let sd = StableDiffusion::load(reference, &device, DType::F32).unwrap();
        let ctx = sd.context(&[sd.tokenizer.encode("a photo")]).unwrap();
        drop(sd);
        let cin = unet.in_channels;
        let v = crate::rng::Rng::new(3).normals(cin * side * side);
        let x = Tensor::<4>::from_data(TensorData::new(v, [1, cin, side, side]), &device);
        unet.forward(x, &[300.0], &ctx).into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// The text encoder's last hidden state for "a photo" from the folder `dir`, in f32.
    fn text_out(dir: &Path) -> Vec<f32> {
        let sd = StableDiffusion::load(dir, &Device::flex(), DType::F32).unwrap();
        let t = sd.context(&[sd.tokenizer.encode("a photo")]).unwrap();
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// UNet output and text encoding of `reference` quantised at `bits`, relative error
    /// (mean |Δ| / mean |value|) against the f32 model: (UNet, text encoder).
    pub(crate) fn errors(reference: &Path, bits: u8, side: usize, name: &str) -> (f32, f32) {
        let out = fresh(name);
        quantize_folder(reference, &out, scheme_for_bits(bits, 64).unwrap(), &mut |_| {}).unwrap();
        let unet = rel(&unet_out(reference, reference, side), &unet_out(&out, reference, side));
        let text = rel(&text_out(reference), &text_out(&out));
        let _ = std::fs::remove_dir_all(&out);
        (unet, text)
    }

    /// On the tiny fixture the quantised networks stay within their bounds of the f32 ones
    /// (measured, docs/BENCHMARKS.md (session 16): int8 UNet 0.022 / text 0.0099, NF4 0.34 / 0.17 — the tiny
    /// random network amplifies each weight's error about 4×; bounds ≈ 1.5–2× what was
    /// measured, far below a broken packing's ≳ 1) and are not the f32 ones.
    #[test]
    fn quantised_networks_stay_close_to_the_f32_ones() {
        for (bits, unet_bound, text_bound) in [(8u8, 0.04, 0.02), (4, 0.5, 0.3)] {
            let (unet, text) = errors(&fixture(), bits, 16, &format!("err{bits}"));
            eprintln!("{bits}-bit on the tiny fixture: UNet relative error {unet}, text encoder {text}");
            assert!(unet < unet_bound && text < text_bound, "{bits}-bit: UNet {unet}, text {text}");
            assert!(unet > 0.0 && text > 0.0, "{bits}-bit: the weights were not quantised");
        }
    }

    /// The same on SD-2's shape (`realfill sd-random`), where one is given: a measurement, run
    /// by `REALFILL_SD2_DIR=/var/tmp/sd2-rs cargo test --release --lib quantize -- --ignored --nocapture`
    /// (writes two quantised copies under the temporary folder, ≈ 1.6 GB, removed after).
    #[test]
    #[ignore]
    fn quantised_sd2_networks_error() {
        let dir = std::env::var_os("REALFILL_SD2_DIR").expect("REALFILL_SD2_DIR names an SD-2-shaped folder");
        let measured: Vec<(u8, f32, f32)> = [8u8, 4]
            .into_iter()
            .map(|bits| {
                let (unet, text) = errors(Path::new(&dir), bits, 64, &format!("sd2-{bits}"));
                eprintln!("{bits}-bit on SD-2's shape: UNet relative error {unet}, text encoder {text}");
                (bits, unet, text)
            })
            .collect();
        for (bits, unet, _) in measured {
            assert!(unet < if bits == 8 { 0.05 } else { 0.5 }, "{bits}-bit UNet {unet}");
        }
    }

    /// Seconds of wall and of this process's CPU time (user + system, from /proc, in the
    /// kernel's 100 Hz ticks) for `f`.
    fn timed(f: impl FnOnce()) -> (f64, f64) {
        let cpu = || {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<f64> = after.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            // Fields 14 and 15 of stat(5), counted after the command's closing parenthesis.
            fields.get(10).zip(fields.get(11)).map_or(0.0, |(u, s)| (u + s) / 100.0)
        };
        let (w, c) = (std::time::Instant::now(), cpu());
        f();
        (w.elapsed().as_secs_f64(), cpu() - c)
    }

    /// The guided pair's UNet step (batch 2, 64² latent, f32 compute) on SD-2's shape with
    /// f32, int8 and NF4 weights, alternating so that a shared machine's load falls on all
    /// three alike: a measurement, run by
    /// `REALFILL_SD2_DIR=/var/tmp/sd2-rs cargo test --release --lib sd2_step_time -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sd2_step_time() {
        let dir =
            PathBuf::from(std::env::var_os("REALFILL_SD2_DIR").expect("REALFILL_SD2_DIR names an SD-2-shaped folder"));
        let device = Device::flex();
        let mut unets =
            vec![("f32", crate::diffusion::sd::unet::UNet::load(&dir.join("unet"), &device, DType::F32).unwrap().0)];
        let mut outs = Vec::new();
        for bits in [8u8, 4] {
            let out = fresh(&format!("time{bits}"));
            quantize_folder(&dir, &out, scheme_for_bits(bits, 64).unwrap(), &mut |_| {}).unwrap();
            let (u, _) = crate::diffusion::sd::unet::UNet::load(&out.join("unet"), &device, DType::F32).unwrap();
            unets.push((if bits == 8 { "int8" } else { "nf4" }, u));
            outs.push(out);
        }
        let cin = unets[0].1.in_channels;
        let x = Tensor::<4>::from_data(
            TensorData::new(crate::rng::Rng::new(1).normals(2 * cin * 64 * 64), [2, cin, 64, 64]),
            &device,
        );
        let ctx = Tensor::<3>::from_data(
            TensorData::new(crate::rng::Rng::new(2).normals(2 * 77 * 1024), [2, 77, 1024]),
            &device,
        );
        for round in 0..3 {
            for (name, u) in &unets {
                let (w, c) = timed(|| {
                    std::hint::black_box(u.forward(x.clone(), &[500.0, 500.0], &ctx).into_data());
                });
                eprintln!("round {round} {name}: guided pair step {w:.2} s wall, {c:.2} s CPU");
            }
        }
        for out in outs {
            let _ = std::fs::remove_dir_all(out);
        }
    }

    /// `--sd-precision int8`'s two ways on SD-2's shape (f16 compute, guided pair, 64² latent):
    /// burn's Q8S made after the f16 load (what it was until session 17, and still is off the
    /// CPU) against the weights packed as they are read, beside plain f16, alternating: a
    /// measurement, run by
    /// `REALFILL_SD_BURN_CPU=1 REALFILL_SD2_DIR=/var/tmp/sd2-rs cargo test --release --lib int8_step_time -- --ignored --nocapture`
    /// (without the switch the CPU runs them all on realfill's kernels, `cpu_forward`).
    #[test]
    #[ignore]
    fn int8_step_time() {
        use crate::diffusion::sd::unet::UNet;
        let dir =
            PathBuf::from(std::env::var_os("REALFILL_SD2_DIR").expect("REALFILL_SD2_DIR names an SD-2-shaped folder"));
        let device = Device::flex();
        let int8 = Some(Scheme { format: Format::Int8, block: 64 });
        let unets = vec![
            ("f16", UNet::load(&dir.join("unet"), &device, DType::F16).unwrap().0),
            (
                "q8s",
                crate::diffusion::sd::quant::quantize_q8(
                    UNet::load(&dir.join("unet"), &device, DType::F16).unwrap().0,
                    64,
                )
                .0,
            ),
            ("packed", UNet::load_packing(&dir.join("unet"), &device, DType::F16, int8).unwrap().0),
        ];
        let cin = unets[0].1.in_channels;
        let x = Tensor::<4>::from_data(
            TensorData::new(crate::rng::Rng::new(1).normals(2 * cin * 64 * 64), [2, cin, 64, 64]),
            (&device, DType::F16),
        );
        let ctx = Tensor::<3>::from_data(
            TensorData::new(crate::rng::Rng::new(2).normals(2 * 77 * 1024), [2, 77, 1024]),
            (&device, DType::F16),
        );
        let mut first = Vec::new();
        for round in 0..3 {
            for (name, u) in &unets {
                let mut out = None;
                let (w, c) = timed(|| out = Some(u.forward(x.clone(), &[500.0, 500.0], &ctx).into_data()));
                eprintln!("round {round} {name}: guided pair step {w:.2} s wall, {c:.2} s CPU");
                if round == 0 {
                    first.push(out.unwrap().convert::<f32>().try_into_vec::<f32>().unwrap());
                }
            }
        }
        for (k, name) in ["q8s", "packed"].iter().enumerate() {
            eprintln!("{name} against f16: relative error {:.4}", rel(&first[k + 1], &first[0]));
        }
    }

    /// A tensor as written: name, type, shape, bytes.
    type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

    /// A quantised file whose packed weights do not hold together is refused with the file
    /// named and what is wrong, not read past its end or widened into the wrong shape.
    #[test]
    fn a_damaged_quantised_folder_is_refused_by_name() {
        let done = fresh("to-damage");
        quantize_folder(&fixture(), &done, Scheme { format: Format::Int8, block: 64 }, &mut |_| {}).unwrap();
        let file = done.join("unet/diffusion_pytorch_model.safetensors");
        let original = std::fs::read(&file).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&original).unwrap();
        let meta = meta.metadata().clone();
        let tensors = safetensors::SafeTensors::deserialize(&original).unwrap();
        let packed = tensors
            .names()
            .into_iter()
            .find(|n| n.ends_with(".weight") && tensors.tensor(&format!("{n}{ABSMAX}")).is_ok())
            .unwrap()
            .to_string();
        // Writes the file again with `change` applied to each (name, dtype, shape, bytes).
        let rewrite = |change: &dyn Fn(&mut Vec<Raw>), meta: Option<std::collections::HashMap<String, String>>| {
            let mut all: Vec<Raw> = tensors
                .tensors()
                .into_iter()
                .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
                .collect();
            change(&mut all);
            let views: Vec<_> = all
                .iter()
                .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            std::fs::write(&file, safetensors::serialize(views, meta).unwrap()).unwrap();
        };
        let refused = |what: &str| {
            let e = StableDiffusion::load(&done, &Device::flex(), DType::F32).err().expect(what).to_string();
            assert!(e.contains("diffusion_pytorch_model.safetensors"), "{what}: {e}");
            e
        };
        rewrite(&|all| all.retain(|t| t.0 != format!("{packed}{ABSMAX}")), meta.clone());
        assert!(refused("no block maxima").contains("has no"));
        rewrite(
            &|all| {
                let t = all.iter_mut().find(|t| t.0 == packed).unwrap();
                t.2 = vec![t.3.len()];
            },
            meta.clone(),
        );
        assert!(refused("codes of another shape").contains("damaged"));
        let mut other_block = meta.clone().unwrap();
        other_block.insert("realfill.block_size".into(), "32".into());
        rewrite(&|_| {}, Some(other_block));
        assert!(refused("another block size").contains("expected F16"));
        let mut no_block = meta.clone().unwrap();
        no_block.remove("realfill.block_size");
        rewrite(&|_| {}, Some(no_block));
        assert!(refused("no block size").contains("without a valid"));
        // As written, it loads.
        std::fs::write(&file, &original).unwrap();
        StableDiffusion::load(&done, &Device::flex(), DType::F32).unwrap();
        let _ = std::fs::remove_dir_all(&done);
    }

    /// A folder that links back to one above it is copied once, not into itself.
    #[test]
    fn a_link_back_up_the_folder_is_not_followed_round() {
        let model = fresh("looped-model");
        copy_dir(&fixture(), &model);
        std::os::unix::fs::symlink("..", model.join("vae").join("up")).unwrap();
        std::os::unix::fs::symlink("../tokenizer", model.join("vae").join("words")).unwrap();
        let out = fresh("looped-out");
        quantize_folder(&model, &out, Scheme { format: Format::Int8, block: 64 }, &mut |_| {}).unwrap();
        let files = |d: &Path| walk(d).len();
        // The model's own files, and the tokenizer's again under `vae/words` (a link to a
        // folder that is not above it is copied as any folder is).
        assert_eq!(files(&out), files(&model) + files(&model.join("tokenizer")));
        assert!(out.join("vae/words/vocab.json").is_file() && !out.join("vae/up").exists());
        let _ = std::fs::remove_dir_all(&model);
        let _ = std::fs::remove_dir_all(&out);
    }

    /// The files under `dir` (links not followed).
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
            if std::fs::symlink_metadata(&e).unwrap().is_dir() {
                found.extend(walk(&e));
            } else if !std::fs::symlink_metadata(&e).unwrap().file_type().is_symlink() {
                found.push(e);
            }
        }
        found
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().map(|e| e.unwrap().path()) {
            let t = to.join(e.file_name().unwrap());
            if e.is_dir() { copy_dir(&e, &t) } else { std::fs::copy(&e, &t).map(|_| ()).unwrap() }
        }
    }

    /// Bad input is refused with the folder and the problem named, and leaves nothing behind.
    #[test]
    fn bad_input_is_refused_by_name() {
        let scheme = Scheme { format: Format::Int8, block: 64 };
        let missing = fresh("missing-model");
        let out = fresh("refused");
        let e = quantize_folder(&missing, &out, scheme, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("realfill-quantize-missing-model") && e.contains("not a folder"), "{e}");
        assert!(!out.exists());

        let done = fresh("done");
        quantize_folder(&fixture(), &done, scheme, &mut |_| {}).unwrap();
        let e = quantize_folder(&done, &out, scheme, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("already quantised (8-bit int8 weights (block 64))") && e.contains("unet"), "{e}");
        assert!(!out.exists());

        let e = quantize_folder(&fixture(), &done, scheme, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(scheme_for_bits(3, 64), None);
        let _ = std::fs::remove_dir_all(&done);
    }
}
