//! realfill: complete a photo from the scene's own reference photos.
//!
//! Data flow: image files → [`scene::Scene`] → [`engine::Job`] → worker thread (device and
//! model) → [`engine::Event`]s (progress, previews, result) → CLI or app.

pub mod align;
pub mod allocator;
pub mod app;
pub mod cli;
#[cfg(feature = "dev-tools")]
pub mod dev;
pub mod diffusion;
pub mod engine;
pub mod error;
pub mod eval;
pub mod input_file;
pub mod kernels;
pub mod remote;
pub mod rng;
pub mod scene;
pub mod settings;
pub mod switches;
pub mod tempfiles;

pub use error::{Error, Result};
