//! transformers' `CLIPTextModel` (OpenCLIP ViT-H's text tower in Stable Diffusion 2), built
//! from `text_encoder/config.json`: token and position embeddings, pre-norm transformer layers
//! with causal self-attention, the final layer norm. Its `last_hidden_state` conditions the UNet.

use std::path::Path;

use burn::nn::{Embedding, LayerNorm};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::blocks::{Proj, merge_heads, split_heads};
use super::config::TextConfig;
use super::layers::Dense;
use super::packed::Scheme;
use super::weights::Weights;
use crate::error::Result;

#[derive(Module, Debug)]
pub struct Layer {
    layer_norm1: LayerNorm,
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    out_proj: Proj,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

#[derive(Module, Debug)]
pub struct TextEncoder {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    heads: usize,
    quick_gelu: bool,
    /// The layer norms' ε (burn's `LayerNorm` keeps its own private).
    eps: f32,
    pub max_positions: usize,
    pub width: usize,
    /// How its weights are quantised, if its folder was made by `realfill quantize`.
    #[module(skip)]
    pub scheme: Option<Scheme>,
}

impl TextEncoder {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<(TextEncoder, TextConfig)> {
        Self::load_packing(dir, device, dtype, None)
    }

    /// `load`, float weights packed by `pack` as they are read (`Weights::packing`).
    pub fn load_packing(
        dir: &Path,
        device: &Device,
        dtype: DType,
        pack: Option<Scheme>,
    ) -> Result<(TextEncoder, TextConfig)> {
        let c = TextConfig::read(&dir.join("config.json"))?;
        let w = Weights::open(dir, device, dtype)?.packing(pack);
        Ok((TextEncoder::build(&c, &w)?, c))
    }

    pub fn build(c: &TextConfig, w: &Weights) -> Result<TextEncoder> {
        let d = c.hidden_size;
        let eps = c.layer_norm_eps;
        // transformers 4 saves CLIPTextModel's tensors under `text_model.`; transformers 5
        // saves them without it (`embeddings.…`, `encoder.layers.0.…`): both are read, as
        // transformers itself does.
        let p = if !w.has("text_model.embeddings.token_embedding.weight") && w.has("embeddings.token_embedding.weight")
        {
            ""
        } else {
            "text_model."
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = format!("{p}encoder.layers.{i}");
                Ok(Layer {
                    layer_norm1: w.layer_norm(&format!("{l}.layer_norm1"), d, eps)?,
                    q_proj: Proj::load(w, &format!("{l}.self_attn.q_proj"), d, d)?,
                    k_proj: Proj::load(w, &format!("{l}.self_attn.k_proj"), d, d)?,
                    v_proj: Proj::load(w, &format!("{l}.self_attn.v_proj"), d, d)?,
                    out_proj: Proj::load(w, &format!("{l}.self_attn.out_proj"), d, d)?,
                    layer_norm2: w.layer_norm(&format!("{l}.layer_norm2"), d, eps)?,
                    fc1: w.linear(&format!("{l}.mlp.fc1"), d, c.intermediate_size)?,
                    fc2: w.linear(&format!("{l}.mlp.fc2"), c.intermediate_size, d)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(TextEncoder {
            token_embedding: w.embedding(&format!("{p}embeddings.token_embedding.weight"), c.vocab_size, d)?,
            position_embedding: w.embedding(
                &format!("{p}embeddings.position_embedding.weight"),
                c.max_position_embeddings,
                d,
            )?,
            layers,
            final_layer_norm: w.layer_norm(&format!("{p}final_layer_norm"), d, eps)?,
            heads: c.num_attention_heads,
            quick_gelu: c.hidden_act == "quick_gelu",
            eps: eps as f32,
            max_positions: c.max_position_embeddings,
            width: d,
            scheme: w.scheme(),
        })
    }

    /// How many token embeddings it holds (token ids run 0..this).
    pub fn vocab_size(&self) -> usize {
        self.token_embedding.weight.dims()[0]
    }

    /// The self-attention projections of every layer (LoRA's targets in the text encoder).
    pub fn projs_mut(&mut self) -> Vec<&mut Proj> {
        self.layers.iter_mut().flat_map(|l| [&mut l.q_proj, &mut l.k_proj, &mut l.v_proj, &mut l.out_proj]).collect()
    }

    /// `ids`: B rows of token ids (at most `max_positions` each, all the same length).
    /// Returns the last hidden state [B, N, width] in f32.
    pub fn forward(&self, ids: &[Vec<i64>]) -> Tensor<3> {
        if super::cpu_forward::serves(&self.token_embedding.weight.device()) {
            return self.forward_cpu(ids);
        }
        self.forward_burn(ids)
    }

    /// `forward` on realfill's CPU kernels (`cpu_forward`): the same arguments and result.
    pub fn forward_cpu(&self, ids: &[Vec<i64>]) -> Tensor<3> {
        use super::cpu_forward::{dense, layer_eps, param, proj};
        use crate::kernels::rows::gelu_all;
        use crate::kernels::sdpa::{Heads, attention};
        let (b, n, d) = (ids.len(), ids[0].len(), self.width);
        let rows = b * n;
        let (tokens, positions) = (param(&self.token_embedding.weight), param(&self.position_embedding.weight));
        let mut h = vec![0.0f32; rows * d];
        for (r, row) in h.chunks_exact_mut(d).enumerate() {
            let (id, p) = (ids[r / n][r % n] as usize, r % n);
            let (t, e) = (&tokens[id * d..(id + 1) * d], &positions[p * d..(p + 1) * d]);
            row.iter_mut().zip(t.iter().zip(e)).for_each(|(o, (t, e))| *o = t + e);
        }
        for l in &self.layers {
            let x = layer_eps(&l.layer_norm1, &h, self.eps);
            let [q, k, v] = [&l.q_proj, &l.k_proj, &l.v_proj].map(|p| proj(p, &x, rows, None));
            drop(x);
            let heads = |t| Heads { data: t, off: 0, ld: d };
            let a = attention(heads(&q), heads(&k), heads(&v), b, n, n, self.heads, d / self.heads, true);
            h = proj(&l.out_proj, &a, rows, Some(h));
            let mut x = dense(&l.fc1, &layer_eps(&l.layer_norm2, &h, self.eps), rows, None);
            gelu_all(&mut x, self.quick_gelu);
            h = dense(&l.fc2, &x, rows, Some(h));
        }
        let out = layer_eps(&self.final_layer_norm, &h, self.eps);
        Tensor::from_data(TensorData::new(out, [b, n, d]), &self.token_embedding.weight.device())
    }

    /// `forward` on burn's operations.
    pub fn forward_burn(&self, ids: &[Vec<i64>]) -> Tensor<3> {
        let device = self.token_embedding.weight.device();
        let b = ids.len();
        let n = ids[0].len();
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, n]), &device);
        let positions = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let mut h = self.token_embedding.forward(tokens) + self.position_embedding.forward(positions);
        let causal = AttentionModuleOptions { is_causal: true, ..Default::default() };
        for l in &self.layers {
            let x = l.layer_norm1.forward(h.clone());
            let q = split_heads(l.q_proj.forward(x.clone()), self.heads);
            let k = split_heads(l.k_proj.forward(x.clone()), self.heads);
            let v = split_heads(l.v_proj.forward(x), self.heads);
            let a = attention(q, k, v, None, None, causal);
            h = h + l.out_proj.forward(merge_heads(a));
            let x = l.fc1.forward(l.layer_norm2.forward(h.clone()));
            let x = if self.quick_gelu { x.clone() * sigmoid(x * 1.702) } else { gelu(x) };
            h = h + l.fc2.forward(x);
        }
        self.final_layer_norm.forward(h).cast(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_max(a: Tensor<3>, b: Tensor<3>) -> f32 {
        let (a, b) = (a.into_data().try_to_vec::<f32>().unwrap(), b.into_data().try_to_vec::<f32>().unwrap());
        assert_eq!(a.len(), b.len());
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        d / b.iter().map(|v| v.abs()).fold(0.0, f32::max)
    }

    /// On realfill's kernels the text encoder computes what burn computes: plain, with the
    /// fixture's learned LoRA adapters, with CLIP's quick GELU, on int8 weights packed at load;
    /// two prompts of 77 tokens, so the causal mask matters.
    #[test]
    fn the_text_encoder_matches_burn() {
        let sd_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd-tiny"));
        let device = Device::flex();
        let mut sd = crate::diffusion::sd::StableDiffusion::load(sd_dir, &device, DType::F32).unwrap();
        let ids = vec![sd.tokenizer.encode(""), sd.tokenizer.encode("a photo of sks on a table")];
        assert_eq!(ids[0].len(), 77);
        let check = |t: &TextEncoder, what: &str| {
            let e = rel_max(t.forward_cpu(&ids), t.forward_burn(&ids));
            assert!(e < 1e-5, "{what}: {e}");
        };
        check(sd.text_encoder().unwrap(), "f32");
        let plain = sd.text_encoder().unwrap().forward_cpu(&ids);
        assert!(crate::diffusion::sd::lora::load(&mut sd, &sd_dir.join("lora_after.safetensors")).unwrap() > 0);
        check(sd.text_encoder().unwrap(), "with LoRA");
        let adapted = sd.text_encoder().unwrap().forward_cpu(&ids);
        assert!(rel_max(adapted, plain) > 1e-3, "the fixture's adapters change the text encoder");
        let (mut quick, _) = TextEncoder::load(&sd_dir.join("text_encoder"), &device, DType::F32).unwrap();
        quick.quick_gelu = true;
        check(&quick, "quick GELU");
        let int8 = Scheme { format: super::super::packed::Format::Int8, block: 16 };
        let (packed, _) =
            TextEncoder::load_packing(&sd_dir.join("text_encoder"), &device, DType::F32, Some(int8)).unwrap();
        assert!(packed.layers[0].fc1.packed.is_some(), "the int8 layers are packed");
        check(&packed, "int8");
    }

    /// The tiny fixture's text encoder saved as transformers 5 does (no `text_model.` prefix)
    /// loads and encodes exactly as the fixture itself.
    #[test]
    fn a_text_encoder_saved_without_the_text_model_prefix_is_read() {
        let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd-tiny/text_encoder"));
        let dir = std::env::temp_dir().join(format!("realfill-text-prefix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture.join("config.json"), dir.join("config.json")).unwrap();
        let bytes = std::fs::read(fixture.join("model.fp16.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let renamed: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name.strip_prefix("text_model.").unwrap_or(&name).to_string(), view))
            .collect();
        assert!(renamed.iter().all(|(n, _)| !n.starts_with("text_model.")));
        safetensors::serialize_to_file(renamed, None, &dir.join("model.safetensors")).unwrap();
        let device = Device::flex();
        let (a, _) = TextEncoder::load(fixture, &device, DType::F32).unwrap();
        let (b, _) = TextEncoder::load(&dir, &device, DType::F32).unwrap();
        let ids = vec![vec![1i64, 20, 300, 2]];
        let (ea, eb) = (a.forward(&ids).into_data(), b.forward(&ids).into_data());
        assert_eq!(ea.try_to_vec::<f32>().unwrap(), eb.try_to_vec::<f32>().unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
}
