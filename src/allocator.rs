//! How the C allocator treats the large, short-lived buffers burn's CPU backend makes for every
//! tensor. glibc serves blocks above 128 KB–32 MB from fresh `mmap`s and unmaps them on free, so
//! each operation's output arrives as new pages the kernel must zero (12 % of a Stable Diffusion
//! UNet step in `perf`: `clear_page_erms`). Serving them from the heap and keeping freed memory
//! for reuse makes that step 10–27 % faster (docs/BENCHMARKS.md, session 8). The cost: the process
//! keeps its peak memory until it exits instead of returning it between jobs.

/// Called once at start-up, before any thread exists. `REALFILL_DEFAULT_MALLOC=1` leaves
/// glibc's defaults (to measure the difference; read here, before `switches` exists).
pub fn keep_freed_memory() {
    if std::env::var_os("REALFILL_DEFAULT_MALLOC").is_some_and(|v| v == "1") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's mallopt parameters (malloc.h).
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tuning; called before other threads start.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20); // glibc's largest: 32 MiB
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_TOP_PAD, 256 << 20);
        }
    }
}

/// Gives the pages of freed heap blocks back to the system (glibc's `malloc_trim`, which also
/// releases free pages in the middle of the heap). With `keep_freed_memory`'s tuning, memory
/// freed once for good (the Stable Diffusion text encoder's weights after encoding) would stay
/// resident and could only be reused by blocks under the mmap threshold.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free pages to the kernel; it takes the arena locks.
        unsafe {
            malloc_trim(0);
        }
    }
}
