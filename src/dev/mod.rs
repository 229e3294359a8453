//! Developer tools behind the `dev-tools` cargo feature (on by default, so `cargo test` checks
//! them; a build for people who only edit photos leaves them out with
//! `--no-default-features`): `realfill bench` (time per step, FLOP/s, memory) and
//! `realfill torch-check` (the scene model against PyTorch, for bench/torch_reference.sh),
//! `realfill sd-check` (the Stable Diffusion networks against diffusers).

pub mod bench;
pub mod sd_check;
pub mod sd_random;
pub mod torch_check;
