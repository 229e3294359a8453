//! The networks' `config.json` files, as diffusers and transformers write them. Every size the
//! networks use comes from here (nothing is a Stable-Diffusion-2 constant), so a smaller or
//! differently sized model of the same family loads too. Options realfill does not implement
//! are refused with the file's name rather than silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// A config field diffusers writes either as one number for every block or as a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for each of `n` blocks.
    pub fn expand(&self, n: usize, file: &Path, field: &str) -> Result<Vec<usize>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::input(
                file,
                format!("`{field}` lists {} values for {n} blocks; the config is inconsistent", v.len()),
            )),
        }
    }
}

fn d_groups() -> usize {
    32
}
fn d_unet_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_one() -> PerBlock {
    PerBlock::One(1)
}
fn d_silu() -> String {
    "silu".into()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_three() -> usize {
    3
}
fn d_four() -> usize {
    4
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_layers_one() -> usize {
    1
}

/// `unet/config.json` of a `UNet2DConditionModel`.
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_four")]
    pub in_channels: usize,
    #[serde(default = "d_four")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    pub layers_per_block: PerBlock,
    /// Heads per block in the configs diffusers writes for Stable Diffusion (a historical
    /// misnomer: diffusers reads it as the head count when `num_attention_heads` is absent).
    #[serde(default)]
    pub attention_head_dim: Option<PerBlock>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: PerBlock,
    #[serde(default = "d_one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_unet_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: usize,
    #[serde(default = "d_one_usize")]
    pub downsample_padding: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_three")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_three")]
    pub conv_out_kernel: usize,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub only_cross_attention: Value,
    #[serde(default)]
    pub class_embed_type: Value,
    #[serde(default)]
    pub addition_embed_type: Value,
    #[serde(default)]
    pub time_embedding_dim: Value,
    #[serde(default)]
    pub time_cond_proj_dim: Value,
    #[serde(default)]
    pub encoder_hid_dim: Value,
    #[serde(default)]
    pub mid_block_scale_factor: Option<f64>,
    #[serde(default = "d_default")]
    pub attention_type: String,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(skip)]
    pub file: PathBuf,
}

fn d_one_usize() -> usize {
    1
}

/// One down or up level of the UNet, resolved from the config.
#[derive(Clone, Debug)]
pub struct UNetLevel {
    pub channels: usize,
    pub cross_attention: bool,
    pub heads: usize,
    pub transformer_layers: usize,
    pub layers: usize,
    pub cross_dim: usize,
}

impl UNetConfig {
    pub fn read(path: &Path) -> Result<UNetConfig> {
        let mut c: UNetConfig = read_json(path)?;
        c.file = path.to_path_buf();
        c.check()?;
        Ok(c)
    }

    fn unsupported(&self, what: impl std::fmt::Display) -> Error {
        Error::input(&self.file, format!("{what}: realfill does not implement this UNet variant"))
    }

    fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::input(
                &self.file,
                "block_out_channels, down_block_types and up_block_types must have the same, non-zero length",
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(self.unsupported(format!("down block type {t}")));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(self.unsupported(format!("up block type {t}")));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(self.unsupported(format!("mid block type {:?}", self.mid_block_type)));
        }
        let plain = |v: &Value| v.is_null() || v == &Value::Bool(false);
        for (name, v) in [
            ("class_embed_type", &self.class_embed_type),
            ("addition_embed_type", &self.addition_embed_type),
            ("time_embedding_dim", &self.time_embedding_dim),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
            ("encoder_hid_dim", &self.encoder_hid_dim),
            ("only_cross_attention", &self.only_cross_attention),
        ] {
            if !plain(v) {
                return Err(self.unsupported(format!("{name} = {v}")));
            }
        }
        if self.act_fn != "silu" {
            return Err(self.unsupported(format!("act_fn {}", self.act_fn)));
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(self.unsupported(format!("resnet_time_scale_shift {}", self.resnet_time_scale_shift)));
        }
        if self.time_embedding_type != "positional" {
            return Err(self.unsupported(format!("time_embedding_type {}", self.time_embedding_type)));
        }
        if self.dual_cross_attention || self.attention_type != "default" {
            return Err(self.unsupported("dual cross-attention or gated attention"));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err(self.unsupported("even conv_in/conv_out kernel"));
        }
        if self.mid_block_scale_factor.is_some_and(|f| f != 1.0) {
            return Err(self.unsupported("mid_block_scale_factor other than 1"));
        }
        for (i, lv) in self.levels()?.iter().enumerate() {
            if !lv.channels.is_multiple_of(self.norm_num_groups) {
                return Err(Error::input(
                    &self.file,
                    format!("block {i}: {} channels do not divide into {} groups", lv.channels, self.norm_num_groups),
                ));
            }
            if lv.cross_attention && !lv.channels.is_multiple_of(lv.heads) {
                return Err(Error::input(
                    &self.file,
                    format!("block {i}: {} channels do not divide into {} heads", lv.channels, lv.heads),
                ));
            }
        }
        Ok(())
    }

    /// The down levels, in order (the up levels mirror them).
    pub fn levels(&self) -> Result<Vec<UNetLevel>> {
        let n = self.block_out_channels.len();
        let f = &self.file;
        let heads = match (&self.num_attention_heads, &self.attention_head_dim) {
            (Some(h), _) | (None, Some(h)) => h.expand(n, f, "attention_head_dim")?,
            (None, None) => vec![8; n],
        };
        let layers = self.layers_per_block.expand(n, f, "layers_per_block")?;
        let tl = self.transformer_layers_per_block.expand(n, f, "transformer_layers_per_block")?;
        let cross = self.cross_attention_dim.expand(n, f, "cross_attention_dim")?;
        Ok((0..n)
            .map(|i| UNetLevel {
                channels: self.block_out_channels[i],
                cross_attention: self.down_block_types[i] == "CrossAttnDownBlock2D",
                heads: heads[i],
                transformer_layers: tl[i],
                layers: layers[i],
                cross_dim: cross[i],
            })
            .collect())
    }

    /// Latent sides must divide by this.
    pub fn stride(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers_one")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_four")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    #[serde(skip)]
    pub file: PathBuf,
}

impl VaeConfig {
    pub fn read(path: &Path) -> Result<VaeConfig> {
        let mut c: VaeConfig = read_json(path)?;
        c.file = path.to_path_buf();
        let n = c.block_out_channels.len();
        if n == 0 || c.down_block_types.len() != n || c.up_block_types.len() != n {
            return Err(Error::input(path, "block_out_channels and the block type lists must have the same length"));
        }
        if c.down_block_types.iter().any(|t| t != "DownEncoderBlock2D")
            || c.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
            || c.act_fn != "silu"
        {
            return Err(Error::input(
                path,
                "realfill implements AutoencoderKL with DownEncoderBlock2D/UpDecoderBlock2D and SiLU only",
            ));
        }
        if c.block_out_channels.iter().any(|ch| ch % c.norm_num_groups != 0) {
            return Err(Error::input(path, "block_out_channels must divide into norm_num_groups"));
        }
        Ok(c)
    }

    /// Pixels per latent pixel.
    pub fn factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

fn d_quick_gelu() -> String {
    "quick_gelu".into()
}
fn d_ln_eps() -> f64 {
    1e-5
}
fn d_positions() -> usize {
    77
}

/// `text_encoder/config.json` of a transformers `CLIPTextModel`.
#[derive(Clone, Debug, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(skip)]
    pub file: PathBuf,
}

impl TextConfig {
    pub fn read(path: &Path) -> Result<TextConfig> {
        let mut c: TextConfig = read_json(path)?;
        c.file = path.to_path_buf();
        if !matches!(c.hidden_act.as_str(), "gelu" | "quick_gelu") {
            return Err(Error::input(
                path,
                format!("hidden_act {}: realfill implements gelu and quick_gelu", c.hidden_act),
            ));
        }
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::input(path, "hidden_size does not divide into num_attention_heads"));
        }
        Ok(c)
    }
}

/// Reads a JSON file, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::input(path, "missing: a Stable Diffusion folder in diffusers layout has this file (see README, \"Stable Diffusion\")")
        } else {
            Error::input(path, format!("cannot read: {e}"))
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, format!("not a valid config: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("realfill-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn heads_come_from_attention_head_dim_when_num_attention_heads_is_absent() {
        let dir = test_dir("sd-config");
        let p = write(
            &dir,
            r#"{"block_out_channels":[32,64],"down_block_types":["CrossAttnDownBlock2D","DownBlock2D"],
                "up_block_types":["UpBlock2D","CrossAttnUpBlock2D"],"layers_per_block":2,
                "attention_head_dim":[2,4],"cross_attention_dim":48,"in_channels":9}"#,
        );
        let c = UNetConfig::read(&p).unwrap();
        let lv = c.levels().unwrap();
        assert_eq!((lv[0].heads, lv[1].heads, lv[1].cross_dim, lv[0].layers), (2, 4, 48, 2));
        assert!(lv[0].cross_attention && !lv[1].cross_attention);
    }

    #[test]
    fn unknown_variants_are_refused_with_the_file_named() {
        let dir = test_dir("sd-config-bad");
        let p = write(
            &dir,
            r#"{"block_out_channels":[32],"down_block_types":["SimpleCrossAttnDownBlock2D"],
                "up_block_types":["UpBlock2D"],"layers_per_block":1,"cross_attention_dim":8}"#,
        );
        let e = UNetConfig::read(&p).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("SimpleCrossAttnDownBlock2D"), "{e}");
        let p = write(&dir, r#"{"block_out_channels":[32,64],"down_block_types":["DownBlock2D"]}"#);
        assert!(UNetConfig::read(&p).is_err());
    }
}
