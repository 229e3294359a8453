//! Argument parsing only: no command opens the app, a command runs headless (the work is in
//! the library).

use clap::Parser;

fn main() -> std::process::ExitCode {
    realfill::allocator::keep_freed_memory();
    let cli = realfill::cli::Cli::parse();
    realfill::tempfiles::cleanup_on_signals();
    if let Err(e) = realfill::switches::init() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let Some(command) = cli.command else {
        return match realfill::app::run(cli.photo) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    };
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Headless commands on a machine without a desktop session: Mesa's Vulkan driver
        // looks for a Wayland compositor when wgpu lists adapters, and libwayland prints an
        // error when XDG_RUNTIME_DIR is unset. Point it at the temp folder (no compositor
        // there: the lookup fails quietly).
        // SAFETY: no other thread exists yet, so nothing reads the environment meanwhile.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    match realfill::cli::run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(realfill::Error::Cancelled) => {
            eprintln!("cancelled; nothing was written");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
