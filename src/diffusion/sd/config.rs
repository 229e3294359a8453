//! The networks' `config.json` files, as diffusers and transformers write them. Every size the
//! networks use comes from here (nothing is a Stable-Diffusion-2 constant), so a smaller or
//! differently sized model of the same family loads too. Options realfill does not implement
//! are refused with the file's name rather than silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// What realfill builds from a config, at most. Every number a config gives is checked
/// against these before anything is allocated from it: a crafted config cannot ask for
/// terabytes (Stable Diffusion 2's values are far inside: 4 blocks, 1280 channels, 23 text
/// layers, 64 latent pixels a side).
pub mod bounds {
    use std::ops::RangeInclusive;
    /// Blocks of a UNet or VAE (each halves the resolution).
    pub const BLOCKS: RangeInclusive<usize> = 1..=8;
    /// Channels, hidden and feed-forward widths, cross-attention widths.
    pub const WIDTH: RangeInclusive<usize> = 1..=16_384;
    /// Image and latent channels.
    pub const CHANNELS: RangeInclusive<usize> = 1..=64;
    /// Layers per block, transformer layers, text encoder layers.
    pub const LAYERS: RangeInclusive<usize> = 1..=128;
    /// Attention heads; norm groups.
    pub const HEADS: RangeInclusive<usize> = 1..=1024;
    /// Convolution kernels.
    pub const KERNEL: RangeInclusive<usize> = 1..=15;
    /// The UNet's latent sample size (4096 px at the VAE's usual factor 8).
    pub const SAMPLE_SIZE: RangeInclusive<usize> = 1..=512;
    /// Token vocabulary and positions of the text encoder.
    pub const VOCAB: RangeInclusive<usize> = 1..=1_000_000;
    pub const POSITIONS: RangeInclusive<usize> = 1..=4096;
    /// Training timesteps of a noise schedule (diffusers' models use 1000).
    pub const TIMESTEPS: RangeInclusive<usize> = 2..=100_000;
}

/// The block widths and the channels in and out, within `bounds` (the UNet's and the VAE's
/// configs share them).
fn check_blocks(blocks: &[usize], in_channels: usize, out_channels: usize) -> std::result::Result<(), String> {
    use bounds::*;
    within("block_out_channels (blocks)", blocks.len(), BLOCKS)?;
    for &c in blocks {
        within("block_out_channels", c, WIDTH)?;
    }
    within("in_channels", in_channels, CHANNELS)?;
    within("out_channels", out_channels, CHANNELS)
}

/// `value` of `field` within `range`, else a message naming the field.
pub fn within<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> std::result::Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "`{field}` is {value}; realfill builds models with {field} from {} to {}: the config is damaged or not a Stable Diffusion model",
            range.start(),
            range.end()
        ))
    }
}

/// `value` of `field` a finite number above 0 (epsilons, scales).
fn positive(field: &str, value: f64) -> std::result::Result<(), String> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(format!("`{field}` is {value}; it must be a finite number above 0"))
    }
}

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

    /// Every number within `bounds` (before the rest of the checks use them).
    fn check_numbers(&self) -> std::result::Result<(), String> {
        use bounds::*;
        check_blocks(&self.block_out_channels, self.in_channels, self.out_channels)?;
        within("norm_num_groups", self.norm_num_groups, HEADS)?;
        within("conv_in_kernel", self.conv_in_kernel, KERNEL)?;
        within("conv_out_kernel", self.conv_out_kernel, KERNEL)?;
        within("downsample_padding", self.downsample_padding, 0..=*KERNEL.end())?;
        within("freq_shift", self.freq_shift, 0..=1)?;
        positive("norm_eps", self.norm_eps)?;
        if let Some(s) = self.sample_size {
            within("sample_size", s, SAMPLE_SIZE)?;
        }
        let per_block = [
            ("layers_per_block", Some(&self.layers_per_block), LAYERS),
            ("transformer_layers_per_block", Some(&self.transformer_layers_per_block), LAYERS),
            ("cross_attention_dim", Some(&self.cross_attention_dim), WIDTH),
            ("attention_head_dim", self.attention_head_dim.as_ref(), HEADS),
            ("num_attention_heads", self.num_attention_heads.as_ref(), HEADS),
        ];
        for (field, v, range) in per_block {
            let values = match v {
                Some(PerBlock::One(v)) => std::slice::from_ref(v),
                Some(PerBlock::Each(v)) => v.as_slice(),
                None => &[],
            };
            for &v in values {
                within(field, v, range.clone())?;
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        self.check_numbers().map_err(|why| Error::input(&self.file, why))?;
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
        c.check_numbers().map_err(|why| Error::input(path, why))?;
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

    fn check_numbers(&self) -> std::result::Result<(), String> {
        use bounds::*;
        check_blocks(&self.block_out_channels, self.in_channels, self.out_channels)?;
        within("latent_channels", self.latent_channels, CHANNELS)?;
        within("layers_per_block", self.layers_per_block, LAYERS)?;
        within("norm_num_groups", self.norm_num_groups, HEADS)?;
        positive("scaling_factor", self.scaling_factor)?;
        if let Some(s) = self.shift_factor
            && !s.is_finite()
        {
            return Err(format!("`shift_factor` is {s}; it must be a finite number"));
        }
        Ok(())
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
        c.check_numbers().map_err(|why| Error::input(path, why))?;
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

    fn check_numbers(&self) -> std::result::Result<(), String> {
        use bounds::*;
        within("vocab_size", self.vocab_size, VOCAB)?;
        within("hidden_size", self.hidden_size, WIDTH)?;
        within("intermediate_size", self.intermediate_size, WIDTH)?;
        within("num_hidden_layers", self.num_hidden_layers, LAYERS)?;
        within("num_attention_heads", self.num_attention_heads, HEADS)?;
        within("max_position_embeddings", self.max_position_embeddings, POSITIONS)?;
        positive("layer_norm_eps", self.layer_norm_eps)
    }
}

/// Reads a JSON file, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    if crate::input_file::absent(path) {
        return Err(Error::input(
            path,
            "missing: a Stable Diffusion folder in diffusers layout has this file (see README, \"Stable Diffusion\")",
        ));
    }
    let text = crate::input_file::read_text(path, crate::input_file::CONFIG)?;
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

    /// Every number is checked before anything is sized by it; zero groups or heads (a
    /// division by zero further on) included.
    #[test]
    fn numbers_beyond_what_realfill_builds_are_refused_by_field() {
        let dir = test_dir("sd-config-numbers");
        let unet = |edit: &str| {
            let p = write(
                &dir,
                &format!(
                    r#"{{"block_out_channels":[32,64],"down_block_types":["CrossAttnDownBlock2D","DownBlock2D"],
                        "up_block_types":["UpBlock2D","CrossAttnUpBlock2D"],"layers_per_block":2,
                        "attention_head_dim":[2,4],"cross_attention_dim":48,"in_channels":9{edit}}}"#
                ),
            );
            UNetConfig::read(&p).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(unet("").is_ok());
        for (edit, field) in [
            (r#","sample_size":100000"#, "`sample_size` is 100000"),
            (r#","sample_size":4611686018427387904"#, "`sample_size` is 4611686018427387904"),
            (r#","norm_num_groups":0"#, "`norm_num_groups` is 0"),
            (r#","num_attention_heads":0"#, "`num_attention_heads` is 0"),
            (r#","transformer_layers_per_block":1000000"#, "`transformer_layers_per_block` is 1000000"),
            (r#","norm_eps":-1"#, "`norm_eps` is -1"),
            (r#","conv_in_kernel":1000001"#, "`conv_in_kernel` is 1000001"),
        ] {
            let e = unet(edit).unwrap_err();
            assert!(e.contains("config.json") && e.contains(field), "{edit}: {e}");
        }
        let p = write(
            &dir,
            r#"{"block_out_channels":[32],"down_block_types":["DownEncoderBlock2D"],"up_block_types":["UpDecoderBlock2D"],
                "norm_num_groups":0}"#,
        );
        assert!(VaeConfig::read(&p).unwrap_err().to_string().contains("`norm_num_groups` is 0"));
        let p = write(
            &dir,
            r#"{"vocab_size":100,"hidden_size":0,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":0}"#,
        );
        assert!(TextConfig::read(&p).unwrap_err().to_string().contains("`hidden_size` is 0"));
        let p = write(
            &dir,
            r#"{"vocab_size":100,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,
                "max_position_embeddings":1000000000000}"#,
        );
        assert!(TextConfig::read(&p).unwrap_err().to_string().contains("`max_position_embeddings`"));
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
