//! LoRA adapters on Stable Diffusion's attention projections, as RealFill learns them: the
//! UNet's transformer attention (to_q, to_k, to_v, to_out.0 of self- and cross-attention) and
//! the text encoder's self-attention (q_proj, k_proj, v_proj, out_proj). Files use the names
//! diffusers' `save_lora_weights` writes with PEFT (`unet.<layer>.lora_A.weight` [r, in],
//! `….lora_B.weight` [out, r], `text_encoder.<layer>…`), so a LoRA learned with diffusers
//! loads here and one learned here loads there; alpha is kept in the metadata (`lora_alpha`,
//! default r, i.e. scale 1).

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::prelude::*;

use super::StableDiffusion;
use super::blocks::{Lora, Proj};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Which network a layer belongs to, as the file's key prefix.
const UNET: &str = "unet.";
const TEXT: &str = "text_encoder.";

/// Every adapter target of `sd` (the text encoder's only while it is held). Every caller may
/// change adapters, so the prompt encodings made with the old ones are dropped.
fn all_projs(sd: &mut StableDiffusion) -> Vec<(&'static str, &mut Proj)> {
    sd.contexts.clear();
    let mut v: Vec<(&'static str, &mut Proj)> = sd.unet.projs_mut().into_iter().map(|p| (UNET, p)).collect();
    if let Some(text) = sd.text.as_mut() {
        v.extend(text.projs_mut().into_iter().map(|p| (TEXT, p)));
    }
    v
}

/// New adapters on every target: `down` as PEFT initialises `lora_A` (Kaiming-uniform,
/// bound 1/√in), `up` zero, so the model starts exactly as it was. Trainable; the base layers
/// are frozen.
pub fn init(sd: &mut StableDiffusion, rank: usize, alpha: f32, seed: u64) {
    let mut rng = Rng::new(seed);
    let device = sd.device.clone();
    for (_, p) in all_projs(sd) {
        let (din, dout) = p.dims();
        let bound = 1.0 / (din as f32).sqrt();
        let down: Vec<f32> = (0..din * rank).map(|_| rng.range_f32(-bound, bound)).collect();
        p.lora = Some(Lora {
            down: Param::from_tensor(Tensor::from_data(TensorData::new(down, [din, rank]), &device)),
            up: Param::from_tensor(Tensor::zeros([rank, dout], &device)),
            scale: alpha / rank as f32,
        });
    }
}

/// Loads a LoRA file onto `sd` (replacing any adapters it had). Every adapter in the file
/// must find its layer; layers the file does not name stay plain. With the text encoder freed,
/// its adapters are left for when it is read again (load the file once more then).
pub fn load(sd: &mut StableDiffusion, path: &Path) -> Result<usize> {
    let bad = |m: String| Error::input(path, m);
    let bytes = crate::input_file::read(path, crate::input_file::TENSORS)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a LoRA safetensors file ({e}); it may be truncated")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let alpha: Option<f32> = meta.metadata().as_ref().and_then(|m| m.get("lora_alpha")).and_then(|a| a.parse().ok());
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for (name, v) in st.tensors() {
        let data: Vec<f32> = match v.dtype() {
            safetensors::Dtype::F32 => {
                v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
            }
            safetensors::Dtype::F16 => {
                v.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            safetensors::Dtype::BF16 => {
                v.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            d => return Err(bad(format!("tensor {name} is {d:?}; LoRA weights are f32, f16 or bf16"))),
        };
        tensors.insert(name, (v.shape().to_vec(), data));
    }
    let device = sd.device.clone();
    let mut used = 0;
    for (prefix, p) in all_projs(sd) {
        p.lora = None;
        let a = format!("{prefix}{}.lora_A.weight", p.name);
        let b = format!("{prefix}{}.lora_B.weight", p.name);
        let (Some((sa, va)), Some((sb, vb))) = (tensors.get(&a), tensors.get(&b)) else { continue };
        let (din, dout) = p.dims();
        let r = sa.first().copied().unwrap_or(0);
        if sa.as_slice() != [r, din] || sb.as_slice() != [dout, r] || r == 0 {
            return Err(bad(format!(
                "{a} is {sa:?} and {b} is {sb:?}; this model's layer takes [r, {din}] and [{dout}, r]: the LoRA belongs to another model"
            )));
        }
        // PEFT's [r, in] and [out, r] → burn's [in, r] and [r, out].
        let down = Tensor::<2>::from_data(TensorData::new(va.clone(), [r, din]), &device).transpose();
        let up = Tensor::<2>::from_data(TensorData::new(vb.clone(), [dout, r]), &device).transpose();
        p.lora = Some(Lora {
            down: Param::from_tensor(down),
            up: Param::from_tensor(up),
            scale: alpha.unwrap_or(r as f32) / r as f32,
        });
        used += 2;
    }
    // The freed text encoder's adapters: not applied now, not strays either.
    let waiting = if sd.text.is_none() { tensors.keys().filter(|k| k.starts_with(TEXT)).count() } else { 0 };
    if used + waiting < tensors.len() {
        let known: std::collections::HashSet<String> = all_projs(sd)
            .into_iter()
            .flat_map(|(pre, p)| ["A", "B"].map(|k| format!("{pre}{}.lora_{k}.weight", p.name)))
            .collect();
        let stray: Vec<&String> = tensors.keys().filter(|k| !known.contains(*k)).take(3).collect();
        return Err(bad(format!(
            "names layers this model does not have ({}…): realfill reads diffusers/PEFT LoRA files \
             of the UNet's attention and the text encoder's self-attention",
            stray.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    if used + waiting == 0 {
        return Err(bad("holds no LoRA weights".into()));
    }
    Ok(used / 2)
}

/// The adapters of `sd` in diffusers/PEFT layout (f32), with `lora_alpha` in the metadata.
pub fn to_bytes(sd: &mut StableDiffusion) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut alpha = None;
    for (prefix, p) in all_projs(sd) {
        let Some(l) = &p.lora else { continue };
        let (down, up) = (l.down.val(), l.up.val());
        let [din, r] = down.dims();
        let [_, dout] = up.dims();
        alpha = Some(l.scale * r as f32);
        let bytes = |t: Tensor<2>| -> Result<Vec<u8>> {
            let v =
                t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Engine(format!("{e:?}")))?;
            Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        owned.push((format!("{prefix}{}.lora_A.weight", p.name), vec![r, din], bytes(down.transpose())?));
        owned.push((format!("{prefix}{}.lora_B.weight", p.name), vec![dout, r], bytes(up.transpose())?));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let meta = alpha.map(|a| HashMap::from([("lora_alpha".to_string(), a.to_string())]));
    safetensors::serialize(views, meta).map_err(|e| Error::Engine(format!("LoRA file: {e}")))
}

/// Freezes every weight the model has (before adapters are added for learning: the base
/// layers never learn, the VAE is only run forward).
pub fn freeze_base(sd: &mut StableDiffusion) {
    sd.unet = sd.unet.clone().no_grad();
    sd.text = sd.text.take().map(|t| t.no_grad());
    sd.vae = sd.vae.clone().no_grad();
}

/// Every adapter frozen or trainable; the base layers always frozen.
pub fn set_trainable(sd: &mut StableDiffusion, trainable: bool) {
    for (_, p) in all_projs(sd) {
        if let Some(l) = p.lora.take() {
            p.lora = Some(Lora {
                down: l.down.set_require_grad(trainable),
                up: l.up.set_require_grad(trainable),
                scale: l.scale,
            });
        }
    }
}

/// Removes every adapter: the model as it was downloaded.
pub fn clear(sd: &mut StableDiffusion) {
    for (_, p) in all_projs(sd) {
        p.lora = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    fn tiny() -> StableDiffusion {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny");
        StableDiffusion::load(&dir, &Device::flex(), DType::F32).unwrap()
    }

    fn unet_out(sd: &StableDiffusion) -> Vec<f32> {
        let x = Tensor::<4>::from_data(TensorData::new(Rng::new(3).normals(9 * 16 * 16), [1, 9, 16, 16]), &sd.device);
        let ctx = sd.text_encoder().unwrap().forward(&[sd.tokenizer.encode("a photo of sks")]);
        sd.unet.forward(x, &[300.0], &ctx).into_data().try_into_vec::<f32>().unwrap()
    }

    /// A saved LoRA loads back to the same function, a zero-initialised one changes nothing,
    /// and the PEFT file the reference wrote (tests/fixtures/sd-tiny/lora_init.safetensors)
    /// finds every one of its layers.
    #[test]
    fn adapters_round_trip_through_files() {
        let mut sd = tiny();
        let plain = unet_out(&sd);
        init(&mut sd, 4, 4.0, 1);
        assert_eq!(unet_out(&sd), plain, "up = 0: the model starts as it was");
        let fixture =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny/lora_init.safetensors");
        assert_eq!(load(&mut sd, &fixture).unwrap(), 40);
        let adapted = unet_out(&sd);
        assert_ne!(adapted, plain);
        let path = std::env::temp_dir().join(format!("realfill-lora-rt-{}.safetensors", std::process::id()));
        std::fs::write(&path, to_bytes(&mut sd).unwrap()).unwrap();
        clear(&mut sd);
        assert_eq!(unet_out(&sd), plain);
        load(&mut sd, &path).unwrap();
        assert_eq!(unet_out(&sd), adapted);
        let _ = std::fs::remove_file(&path);
    }
}
