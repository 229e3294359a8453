//! Hand-written CPU kernels, below the maths that uses them: the fused patch attention of the
//! patch engine (`attention`) and the scene network's direct convolution, GroupNorm+SiLU and
//! padded channels-last grids (`conv`, `norm`, `grid`), with the AVX-512 pieces they share
//! (`simd`) and a per-operation profile (`profile`). Every `unsafe` block says why it is sound
//! (`clippy::undocumented_unsafe_blocks` is denied crate-wide) and every unsafe function has
//! a `# Safety` section.
//!
//! Which kernels run is decided once, in [`plan`], from the CPU's features and the switches.

pub mod attention;
pub mod conv;
pub mod grid;
pub mod norm;
pub mod profile;
pub mod simd;

use std::sync::OnceLock;

use simd::Simd;

/// Which CPU kernels this process uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The widest vector form the CPU runs (`REALFILL_NO_AVX512` caps it at AVX2).
    pub simd: Simd,
    /// The scene model runs on realfill's CPU network (`diffusion::cpu_unet`) when the device
    /// is the CPU: unless `REALFILL_BURN_CPU`, and only with a vector form (its plain-Rust loops
    /// would be slower than burn's gemm).
    pub cpu_network: bool,
    /// The patch engine's attention runs as the fused kernel when the device is the CPU
    /// (unless `REALFILL_TENSOR_ATTENTION`).
    pub fused_attention: bool,
}

/// The plan, decided on first use.
pub fn plan() -> Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    *PLAN.get_or_init(|| {
        let sw = crate::switches::get();
        let simd = simd::detect(sw.no_avx512);
        Plan { simd, cpu_network: !sw.burn_cpu && simd != Simd::Portable, fused_attention: !sw.tensor_attention }
    })
}
