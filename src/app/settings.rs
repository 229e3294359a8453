//! Settings that persist between runs of the app (run settings, brush size, the last folder
//! used), kept apart from the runtime state. Stored as JSON in `$REALFILL_CONFIG`, else
//! `$XDG_CONFIG_HOME/realfill`, else `~/.config/realfill`. A missing or unreadable file means
//! defaults; a save is atomic.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::BackendChoice;
use crate::scene::project::RunSettings;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSettings {
    pub run: RunSettings,
    /// Brush radius in image pixels.
    pub brush_radius: f32,
    /// Where jobs compute on this computer (auto, cpu, wgpu).
    pub backend: BackendChoice,
    /// The GPU server as typed in the Run panel (kept when computing here, for next time).
    pub gpu_server: crate::remote::Server,
    /// Jobs compute on `gpu_server` instead of `backend`.
    pub use_gpu_server: bool,
    pub last_dir: Option<PathBuf>,
    /// Pixels the mask grows or shrinks by.
    pub mask_step: f32,
    /// JPEG quality of exports (1–100).
    pub jpeg_quality: u8,
    /// Photos and projects opened or saved, newest first (at most `RECENT`).
    pub recent: Vec<PathBuf>,
}

/// How many recent files are kept.
pub const RECENT: usize = 10;

impl AppSettings {
    /// Where the engine computes: the GPU server when it is in use, else this computer.
    pub fn engine_backend(&self) -> BackendChoice {
        if self.use_gpu_server { BackendChoice::Remote(self.gpu_server.clone()) } else { self.backend.clone() }
    }

    /// Put `path` first among the recent files.
    pub fn remember(&mut self, path: &std::path::Path) {
        self.recent.retain(|p| p != path);
        self.recent.insert(0, path.to_path_buf());
        self.recent.truncate(RECENT);
    }
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            run: RunSettings::default(),
            brush_radius: 24.0,
            backend: BackendChoice::Auto,
            gpu_server: crate::remote::Server { url: "ws://127.0.0.1:7878".into(), token: String::new() },
            use_gpu_server: false,
            last_dir: None,
            mask_step: 8.0,
            jpeg_quality: crate::scene::io::JPEG_QUALITY,
            recent: Vec::new(),
        }
    }
}

pub fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("REALFILL_CONFIG") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("realfill"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("realfill"))
}

fn settings_path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("settings.json"))
}

impl AppSettings {
    /// The saved settings, or defaults (a damaged file is not an error worth stopping for;
    /// it is replaced at the next save).
    pub fn load() -> AppSettings {
        settings_path().map(|p| AppSettings::load_from(&p)).unwrap_or_default()
    }

    pub fn load_from(p: &std::path::Path) -> AppSettings {
        crate::input_file::read_text(p, crate::input_file::CONFIG)
            .ok()
            .and_then(|t| serde_json::from_str::<AppSettings>(&t).ok())
            .map(|mut s| {
                s.run = s.run.clamped();
                s.brush_radius = s.brush_radius.clamp(1.0, 500.0);
                s
            })
            .unwrap_or_default()
    }

    pub fn save(&self) -> crate::Result<()> {
        match settings_path() {
            Some(p) => self.save_to(&p),
            None => Ok(()),
        }
    }

    pub fn save_to(&self, p: &std::path::Path) -> crate::Result<()> {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| crate::Error::output(d, e.to_string()))?;
        }
        crate::scene::io::write_atomic(p, serde_json::to_string_pretty(self).unwrap_or_default().as_bytes())?;
        // The GPU server's token is in there: readable by this user only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
        }
        Ok(())
    }
}

/// Writing the settings to the config folder as they change (the app only; tests keep theirs
/// in memory).
pub struct Autosave {
    pub(super) persist: bool,
    /// The settings as last written, and when.
    saved: AppSettings,
    saved_at: Option<std::time::Instant>,
}

impl Autosave {
    /// Nothing is written until `persist` is set; `s` is what the file holds now.
    pub fn new(s: &AppSettings) -> Autosave {
        Autosave { persist: false, saved: s.clone(), saved_at: None }
    }

    /// Write `s` if it changed, at most every two seconds (a dragged value changes every
    /// frame).
    pub fn save_if_changed(&mut self, s: &AppSettings) -> crate::Result<()> {
        let due = self.saved_at.is_none_or(|t| t.elapsed().as_secs_f32() > 2.0);
        if !(self.persist && due && *s != self.saved) {
            return Ok(());
        }
        self.saved_at = Some(std::time::Instant::now());
        self.saved = s.clone();
        s.save()
    }

    /// On exit: write `s` whatever the time.
    pub fn save_now(&self, s: &AppSettings) {
        if self.persist {
            let _ = s.save();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_a_restart_and_a_damaged_file_means_defaults() {
        let dir = std::env::temp_dir().join(format!("realfill-settings-{}", std::process::id()));
        let path = dir.join("nested").join("settings.json");
        let mut s = AppSettings::default();
        s.run.candidates = 4;
        s.run.engine = crate::settings::EngineKind::SceneModel;
        s.brush_radius = 40.0;
        s.last_dir = Some(PathBuf::from("/photos"));
        s.gpu_server.token = "secret".into();
        s.save_to(&path).unwrap();
        assert_eq!(AppSettings::load_from(&path), s);
        #[cfg(unix)]
        {
            // The GPU server's token is in the file: this user's only.
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "{ not json").unwrap();
        assert_eq!(AppSettings::load_from(&path), AppSettings::default());
        // Out-of-range values from a hand-edited file are clamped.
        std::fs::write(&path, r#"{"brush_radius": 99999, "run": {"candidates": 50}}"#).unwrap();
        let l = AppSettings::load_from(&path);
        assert_eq!((l.brush_radius, l.run.candidates), (500.0, *crate::settings::LIMITS.candidates.end()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recent_files_are_newest_first_without_repeats_and_at_most_ten() {
        let mut s = AppSettings::default();
        for i in 0..12 {
            s.remember(std::path::Path::new(&format!("/p/{i}.jpg")));
        }
        s.remember(std::path::Path::new("/p/5.jpg"));
        assert_eq!(s.recent.len(), RECENT);
        assert_eq!(s.recent[0], PathBuf::from("/p/5.jpg"));
        assert_eq!(s.recent[1], PathBuf::from("/p/11.jpg"));
        assert_eq!(s.recent.iter().filter(|p| p.ends_with("5.jpg")).count(), 1);
        // Older settings files without the new fields still load.
        let old: AppSettings = serde_json::from_str(r#"{"brush_radius": 10.0}"#).unwrap();
        assert!(old.recent.is_empty() && old.jpeg_quality == 95);
    }
}
