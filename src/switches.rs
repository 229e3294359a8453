//! Measuring and tuning switches (`REALFILL_*` environment variables), read once into a
//! [`Switches`] at start-up: `main` calls [`init`], which refuses a malformed value with a
//! message; no code reads these variables itself. A program that embeds the library without
//! calling `init` gets them read on first use.
//!
//! The switches that change a job are passed into it as values: whoever makes the job (the
//! command line, the app, the bench) calls `engine::FillSettings::with_switches`, and the
//! alignment's diagnostics, the memory budget and the patch engine's overrides travel in the
//! job's settings (tests make jobs without them). The process-wide ones are asked with [`get`]
//! by the one module each concerns: the kernels' forms and profile (`kernels`), burn's CPU
//! backend and the tensor attention (`kernels::plan`), the frame log (`app::frame_stats`) and
//! the server's silence (`remote`).
//!
//! Other variables are not switches and are read where they are used: places
//! (`REALFILL_CACHE`, `XDG_CACHE_HOME` and `HOME` in `diffusion::checkpoint`; `REALFILL_CONFIG`,
//! `XDG_CONFIG_HOME` in `app::settings`; `HOME` in `app::file_browser`; `REALFILL_ASSETS` in
//! `scene::demo`), the GPU server's token (`REALFILL_REMOTE_TOKEN`, `engine::device`), and
//! `REALFILL_DEFAULT_MALLOC` (`allocator`, read before anything else runs).
//!
//! | variable | effect |
//! |---|---|
//! | `REALFILL_BURN_CPU=1` | the scene model on burn's CPU backend instead of realfill's CPU network |
//! | `REALFILL_SD_BURN_CPU=1` | Stable Diffusion's networks on burn's CPU backend instead of realfill's CPU kernels (`diffusion::sd::cpu_forward`) |
//! | `REALFILL_TENSOR_ATTENTION=1` | the patch engine's attention through burn tensors, not the fused CPU kernel |
//! | `REALFILL_SIMD=avx2` | the widest vector form realfill's CPU kernels may use: `avx512`, `avx2` or `portable` (plain Rust), to test and measure each form on one machine; burn's and gemm's own kernels still follow the CPU |
//! | `REALFILL_PROFILE=1` | the CPU network prints time per operation kind |
//! | `REALFILL_DEBUG_PARALLAX=1` | print each guide's parallax check |
//! | `REALFILL_DEBUG_ALIGN=DIR` | print the alignment's steps and write each candidate warp, its trust and the per-pixel choice as images into DIR (`align::Diagnostics`) |
//! | `REALFILL_FRAME_LOG=1` | the app prints every frame's time |
//! | `REALFILL_MEMORY_GIB=6` | the memory budget a job must fit (default: ¾ of the machine's memory; `engine::budget`) |
//! | `REALFILL_PATCH='{"patch":5,…}'` | override patch engine settings (a JSON object; an unknown field is an error when a job is made) |
//! | `REALFILL_SERVER_SILENCE=30` | seconds a GPU server may send nothing (not even an answer to a ping) before the client gives it up (`remote::watchdog`; tests shorten it) |

use std::sync::OnceLock;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Switches {
    pub burn_cpu: bool,
    pub sd_burn_cpu: bool,
    pub tensor_attention: bool,
    /// The widest kernel form allowed, one of [`SIMD_FORMS`] (None: whatever the CPU has;
    /// `kernels::simd` turns the name into its form).
    pub simd: Option<String>,
    pub profile: bool,
    pub debug_parallax: bool,
    /// Where to write the alignment's explanation images.
    pub debug_align: Option<std::path::PathBuf>,
    pub frame_log: bool,
    /// The memory budget in GiB, instead of ¾ of the machine's memory.
    pub memory_gib: Option<f64>,
    /// Fields of `PatchSettings` to override.
    pub patch: Option<serde_json::Map<String, serde_json::Value>>,
    /// Seconds a GPU server may stay silent before the client gives it up (None: 30).
    pub server_silence_s: Option<u64>,
}

/// The names `REALFILL_SIMD` takes, widest first.
pub const SIMD_FORMS: [&str; 3] = ["avx512", "avx2", "portable"];

static SWITCHES: OnceLock<Switches> = OnceLock::new();

/// A boolean switch: unset, empty or `0`/`false`/`no`/`off` is off; `1`/`true`/`yes`/`on` is on.
fn flag(name: &str, value: Option<&str>) -> Result<bool> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(v) => Err(Error::Invalid(format!("{name}={v:?}: give 1 to switch it on or 0 to switch it off"))),
    }
}

impl Switches {
    /// Parse switches from `get(name)` (the environment, or a table in tests).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Switches> {
        let f = |name: &str| flag(name, get(name).as_deref());
        let patch = match get("REALFILL_PATCH").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(o)) => Some(o),
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "REALFILL_PATCH={text:?}: give a JSON object such as '{{\"patch\":5}}'"
                    )));
                }
                Err(e) => return Err(Error::Invalid(format!("REALFILL_PATCH={text:?}: not JSON ({e})"))),
            },
        };
        let memory_gib = match get("REALFILL_MEMORY_GIB").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(g) if g.is_finite() && g > 0.0 => Some(g),
                _ => {
                    return Err(Error::Invalid(format!(
                        "REALFILL_MEMORY_GIB={v:?}: give the budget in GiB, a number above 0 such as 6"
                    )));
                }
            },
        };
        let server_silence_s = match get("REALFILL_SERVER_SILENCE").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (2..=3600).contains(&n) => Some(n),
                _ => {
                    return Err(Error::Invalid(format!(
                        "REALFILL_SERVER_SILENCE={v:?}: give whole seconds from 2 to 3600, such as 30"
                    )));
                }
            },
        };
        Ok(Switches {
            memory_gib,
            server_silence_s,
            burn_cpu: f("REALFILL_BURN_CPU")?,
            sd_burn_cpu: f("REALFILL_SD_BURN_CPU")?,
            tensor_attention: f("REALFILL_TENSOR_ATTENTION")?,
            simd: match get("REALFILL_SIMD").map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty()) {
                None => None,
                Some(v) if SIMD_FORMS.contains(&v.as_str()) => Some(v),
                Some(v) => return Err(Error::Invalid(format!("REALFILL_SIMD={v:?}: give avx512, avx2 or portable"))),
            },
            profile: f("REALFILL_PROFILE")?,
            debug_parallax: f("REALFILL_DEBUG_PARALLAX")?,
            debug_align: get("REALFILL_DEBUG_ALIGN").filter(|v| !v.trim().is_empty()).map(std::path::PathBuf::from),
            frame_log: f("REALFILL_FRAME_LOG")?,
            patch,
        })
    }

    pub fn from_env() -> Result<Switches> {
        Switches::parse(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }
}

/// Read the switches from the environment; a malformed one is an error naming it. Call once,
/// at start-up, before any work.
pub fn init() -> Result<()> {
    let s = Switches::from_env()?;
    let _ = SWITCHES.set(s);
    Ok(())
}

/// The switches in force (read on first use if `init` was not called; malformed values then
/// count as off).
pub fn get() -> &'static Switches {
    SWITCHES.get_or_init(|| Switches::from_env().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Switches> {
        Switches::parse(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn switches_parse_and_malformed_values_are_errors() {
        assert_eq!(parse(&[]).unwrap(), Switches::default());
        let s = parse(&[("REALFILL_PROFILE", "1"), ("REALFILL_SIMD", "AVX2"), ("REALFILL_BURN_CPU", "0")]).unwrap();
        assert!(s.profile && s.simd.as_deref() == Some("avx2") && !s.burn_cpu);
        let e = parse(&[("REALFILL_SIMD", "sse")]).unwrap_err().to_string();
        assert!(e.contains("REALFILL_SIMD=\"sse\"") && e.contains("avx512, avx2 or portable"), "{e}");
        assert_eq!(parse(&[("REALFILL_SERVER_SILENCE", "5")]).unwrap().server_silence_s, Some(5));
        assert!(parse(&[("REALFILL_SERVER_SILENCE", "0")]).unwrap_err().to_string().contains("from 2 to 3600"));
        let e = parse(&[("REALFILL_PROFILE", "maybe")]).unwrap_err().to_string();
        assert!(e.contains("REALFILL_PROFILE=\"maybe\""), "{e}");
        let p = parse(&[("REALFILL_PATCH", r#"{"patch":7}"#)]).unwrap().patch.unwrap();
        assert_eq!(p["patch"], 7);
        assert!(parse(&[("REALFILL_PATCH", "{patch:7")]).unwrap_err().to_string().contains("not JSON"));
        assert!(parse(&[("REALFILL_PATCH", "[1]")]).is_err());
    }
}
