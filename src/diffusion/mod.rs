//! Diffusion: noise schedule, sampler (step loop with previews and cancellation), the scene
//! model (UNet), its training and its on-disk cache.

pub mod checkpoint;
pub mod masks;
pub mod sampler;
pub mod scene_model;
pub mod schedule;
pub mod train;
pub mod unet;
