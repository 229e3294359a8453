//! Learned scene models cached on disk, keyed by a hash of everything that shaped them (the
//! working-size pixels, masks, network shape, learning settings and this code's model
//! version), so a second Fill of the same scene starts sampling at once.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use sha2::{Digest, Sha256};

use super::unet::{UNet, UNetSpec};

/// Bump when training or the network changes meaning: old checkpoints are then ignored.
pub const MODEL_VERSION: &str = "scene-unet-v2-x0-residual";

/// The per-user cache folder: `$REALFILL_CACHE`, `$XDG_CACHE_HOME/realfill` or
/// `$HOME/.cache/realfill`. None when none is set: a folder shared by every user (under /tmp)
/// would let another user plant the models a fill loads, so nothing is cached then.
pub fn cache_dir() -> Option<PathBuf> {
    let set = |v: &str| std::env::var_os(v).filter(|d| !d.is_empty()).map(PathBuf::from);
    set("REALFILL_CACHE")
        .or_else(|| set("XDG_CACHE_HOME").map(|d| d.join("realfill")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("realfill")))
}

/// What a job says when it would cache but `cache_dir` is None.
pub const NO_CACHE: &str = "no per-user cache folder (none of REALFILL_CACHE, XDG_CACHE_HOME and HOME is set): \
                            what is learned is not cached, so the next fill learns again";

/// Incremental key builder.
pub struct KeyHasher(Sha256);

impl Default for KeyHasher {
    fn default() -> Self {
        let mut h = Sha256::new();
        h.update(MODEL_VERSION.as_bytes());
        KeyHasher(h)
    }
}

impl KeyHasher {
    pub fn floats(&mut self, v: &[f32]) -> &mut Self {
        // Quantise to 1/4096 so that harmless float noise does not change the key.
        for x in v {
            self.0.update(((x * 4096.0).round() as i32).to_le_bytes());
        }
        self
    }
    pub fn text(&mut self, s: &str) -> &mut Self {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
        self
    }
    pub fn finish(&self) -> String {
        let d = self.0.clone().finalize();
        d.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

pub fn checkpoint_path(key: &str) -> Option<PathBuf> {
    Some(cache_dir()?.join("scenes").join(format!("{key}.bpk")))
}

/// Load a cached model; a file that exists but does not load is deleted (it will be
/// relearned) and reported through the returned message.
pub fn load(path: &Path, spec: &UNetSpec, device: &Device) -> (Option<UNet>, Option<String>) {
    if std::fs::symlink_metadata(path).is_err() {
        return (None, None);
    }
    // burn opens the path itself: a FIFO or device there would block or never end.
    if let Err(e) = crate::input_file::check(path) {
        let _ = std::fs::remove_file(path);
        return (None, Some(format!("cached scene model {e}; removed, relearning")));
    }
    let model = UNet::new(spec, device);
    match model.try_load_file(path) {
        Ok(m) => (Some(m), None),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            (None, Some(format!("cached scene model {} was unreadable ({e}); relearning", path.display())))
        }
    }
}

/// Save atomically (temporary file, then rename); leftovers of killed runs are removed first.
pub fn save(model: &UNet, path: &Path) -> Result<(), String> {
    let dir = path.parent().ok_or("bad checkpoint path")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))?;
    crate::tempfiles::remove_stale_models(dir);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    // Created (empty) here so that a signal's cleanup knows it; burn then writes it.
    let (tmp, _) = crate::tempfiles::Temp::create_new(dir, |suffix| format!("{stem}.tmp-{suffix}.bpk"))
        .map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
    model.clone().save_file(tmp.path()).map_err(|e| format!("cannot save {}: {e}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| format!("cannot save {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_content_and_ignores_float_noise() {
        let a = KeyHasher::default().floats(&[0.5, 0.25]).text("x").finish();
        let b = KeyHasher::default().floats(&[0.5 + 1e-6, 0.25]).text("x").finish();
        let c = KeyHasher::default().floats(&[0.5, 0.26]).text("x").finish();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn save_load_and_corrupt_file_is_discarded() {
        let dir = std::env::temp_dir().join(format!("realfill-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let device = Device::flex();
        let spec = UNetSpec { channels: vec![8, 16], emb_dim: 16 };
        let m = UNet::new(&spec, &device);
        let p = dir.join("k.bpk");
        save(&m, &p).unwrap();
        let (loaded, msg) = load(&p, &spec, &device);
        assert!(loaded.is_some() && msg.is_none());
        std::fs::write(&p, b"garbage").unwrap();
        let (loaded, msg) = load(&p, &spec, &device);
        assert!(loaded.is_none());
        assert!(msg.unwrap().contains("relearning"));
        assert!(!p.exists());
    }
}
