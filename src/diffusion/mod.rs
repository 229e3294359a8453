//! Diffusion: noise schedule, sampler (step loop with previews and cancellation), the scene
//! model (UNet), its training and its on-disk cache, the training-free patch denoiser, and
//! Stable Diffusion 2 inpainting from the user's weights (`sd`).

pub mod checkpoint;
pub mod cpu_unet;
pub mod masks;
pub mod patch;
pub mod sampler;
pub mod scene_model;
pub mod schedule;
pub mod sd;
pub mod solver;
pub mod train;
pub mod unet;
