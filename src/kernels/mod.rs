//! Hand-written CPU kernels, below the maths that uses them: the fused patch attention of the
//! patch engine (`attention`) and the scene network's direct convolution, GroupNorm+SiLU and
//! padded channels-last grids (`conv`, `norm`, `grid`); for Stable Diffusion's wider networks
//! `gemm` products and convolutions built on them (`matmul`, the many-position 3×3 layers by
//! Winograd's minimal filtering: `winograd`), blockwise multi-head attention
//! (`sdpa`) and row operations of transformer blocks (`rows`); the AVX-512 pieces they share
//! (`simd`) and a per-operation profile (`profile`). Every `unsafe` block says why it is sound
//! (`clippy::undocumented_unsafe_blocks` is denied crate-wide) and every unsafe function has
//! a `# Safety` section.
//!
//! Which kernels run is decided once, in [`plan`], from the CPU's features and the switches.

/// Compile a row function three times: for AVX-512, for AVX2 + FMA and for the baseline, and
/// run the form `kernels::plan()` chose.
macro_rules! multiversion {
    ($name:ident, $inner:ident, ($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments, reason = "a row kernel takes its rows, statistics and sizes")]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments, reason = "as above")]
                #[target_feature(enable = "avx512f")]
                fn wide($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                #[allow(clippy::too_many_arguments, reason = "as above")]
                #[target_feature(enable = "avx2,fma")]
                fn mid($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                use crate::kernels::simd::Simd;
                match crate::kernels::plan().simd {
                    // SAFETY: the plan says Avx512 only when the CPU has AVX-512F.
                    Simd::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: the plan says Avx2 only when the CPU has AVX2 and FMA.
                    Simd::Avx2 => return unsafe { mid($($arg),*) },
                    Simd::Portable => {}
                }
            }
            $inner($($arg),*)
        }
    };
}

pub mod attention;
pub mod conv;
pub mod grid;
pub mod matmul;
pub mod norm;
pub mod profile;
#[cfg(test)]
mod reference;
pub mod rows;
pub mod sdpa;
pub mod simd;
pub mod winograd;

use std::sync::OnceLock;

use simd::Simd;

/// Which CPU kernels this process uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The widest vector form the CPU runs (`REALFILL_SIMD` caps it).
    pub simd: Simd,
    /// The scene model runs on realfill's CPU network (`diffusion::cpu_unet`) when the device
    /// is the CPU: unless `REALFILL_BURN_CPU`, and only with a vector form (its plain-Rust loops
    /// would be slower than burn's gemm).
    pub cpu_network: bool,
    /// Stable Diffusion's networks run on these kernels (`diffusion::sd::cpu_forward`) when
    /// the device is the CPU, unless `REALFILL_SD_BURN_CPU`. Their products are `gemm`'s, fast
    /// on any CPU, so no vector form is required.
    pub sd_network: bool,
    /// The patch engine's attention runs as the fused kernel when the device is the CPU
    /// (unless `REALFILL_TENSOR_ATTENTION`).
    pub fused_attention: bool,
}

/// The plan, decided on first use.
pub fn plan() -> Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    *PLAN.get_or_init(|| {
        let sw = crate::switches::get();
        let simd = simd::detect(sw.simd.as_deref().and_then(Simd::parse));
        Plan {
            simd,
            cpu_network: !sw.burn_cpu && simd != Simd::Portable,
            sd_network: !sw.sd_burn_cpu,
            fused_attention: !sw.tensor_attention,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::simd::{self, Simd};

    /// The tests of everything that runs on these kernels, filtered by module path.
    const KERNEL_TESTS: [&str; 4] =
        ["kernels::", "diffusion::cpu_unet::", "diffusion::patch::", "diffusion::sd::cpu_forward::"];

    /// This process tests the widest form the CPU runs; each narrower one (AVX2 and the
    /// portable form on an AVX-512 machine, the portable form on an AVX2 one) is tested by
    /// running this test binary again on the kernels' tests with `REALFILL_SIMD` capping the
    /// form, so every form any x86-64 CPU would pick is checked against the plain references
    /// on whatever machine runs the suite.
    #[test]
    fn the_kernel_tests_pass_at_every_vector_form_this_cpu_runs() {
        // A child of this test (or a run capped by hand) checks only its own form.
        if std::env::var_os("REALFILL_SIMD").is_some() {
            return;
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let narrower: Vec<Simd> = simd::supported().into_iter().skip(1).collect();
        assert_eq!(narrower.last(), Some(&Simd::Portable), "the portable form is always tested");
        for form in narrower {
            let out = std::process::Command::new(&exe)
                .args(KERNEL_TESTS)
                .args(["--skip", "every_vector_form", "--test-threads", "2"])
                .env("REALFILL_SIMD", form.name())
                .output()
                .expect("the test binary runs again");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "REALFILL_SIMD={}:\n{text}\n{}",
                form.name(),
                String::from_utf8_lossy(&out.stderr)
            );
            // A filter that matched nothing would pass too: count what ran.
            let passed: usize = text
                .lines()
                .filter_map(|l| l.strip_prefix("test result: ok. ")?.split(' ').next()?.parse::<usize>().ok())
                .sum();
            assert!(passed >= 10, "REALFILL_SIMD={}: only {passed} kernel tests ran:\n{text}", form.name());
        }
    }

    /// In a child of the test above, the plan runs the form it was asked for (a malformed
    /// other switch would make `switches::get` fall back to the defaults, widest form).
    #[test]
    fn the_plan_runs_the_form_realfill_simd_asks_for() {
        if let Some(asked) = std::env::var("REALFILL_SIMD").ok().and_then(|v| Simd::parse(&v)) {
            assert_eq!(crate::kernels::plan().simd, asked);
        }
    }

    #[test]
    fn the_cap_narrows_the_form_and_names_round_trip() {
        for name in crate::switches::SIMD_FORMS {
            assert_eq!(Simd::parse(name).map(Simd::name), Some(name));
        }
        let widest = simd::supported()[0];
        assert_eq!(simd::detect(None), widest);
        assert_eq!(simd::detect(Some(Simd::Portable)), Simd::Portable);
        // A cap wider than the CPU is no cap.
        assert_eq!(simd::detect(Some(Simd::Avx512)), widest);
        if widest != Simd::Portable {
            assert_eq!(simd::detect(Some(Simd::Avx2)), Simd::Avx2);
        }
    }
}
