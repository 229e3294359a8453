//! The project file: one small JSON document that reopens a piece of work — the target photo,
//! the reference photos, the painted mask, the canvas extension and the run settings.
//!
//! ```json
//! {
//!   "format": "realfill-project",
//!   "version": 1,
//!   "target": "street.jpg",
//!   "references": ["refs/a.jpg", "refs/b.jpg"],
//!   "extension": { "left": 0, "top": 0, "right": 64, "bottom": 0 },
//!   "mask": { "width": 640, "height": 480, "runs": [1200, 35, 605, 35] },
//!   "settings": { "engine": "Auto", "size": 384, "steps": 3, "seed": 0, "candidates": 1,
//!                 "learn_steps": 600, "batch": 8, "crop": 64, "sampler": "Ddim" }
//! }
//! ```
//! Paths are relative to the project file's folder (absolute paths are kept as they are).
//! `mask.runs` are run lengths over the target's pixels in row-major order, alternating
//! keep, fill, keep, … starting with keep (a first run of 0 when pixel 0 is to be filled);
//! they must add up to width × height. `settings` is `settings::RunSettings` (missing fields
//! take their defaults, values are clamped to `settings::LIMITS`). Unknown fields are ignored; a file with a higher
//! `version` than this build knows is refused with a message rather than half-read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Extension;
use super::raster::Mask;
use crate::error::{Error, Result};
pub use crate::settings::RunSettings;

pub const FORMAT: &str = "realfill-project";
pub const VERSION: u32 = 1;
/// File name extension for projects.
pub const EXTENSION: &str = "realfill";

/// A binary mask as alternating keep/fill run lengths (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RleMask {
    pub width: usize,
    pub height: usize,
    pub runs: Vec<u64>,
}

impl RleMask {
    /// Encode a mask whose values are "fill" when ≥ 0.5.
    pub fn encode(width: usize, height: usize, fill: impl IntoIterator<Item = bool>) -> RleMask {
        let mut runs = Vec::new();
        let mut current = false;
        let mut len = 0u64;
        for v in fill {
            if v != current {
                runs.push(len);
                current = v;
                len = 0;
            }
            len += 1;
        }
        runs.push(len);
        RleMask { width, height, runs }
    }

    pub fn from_mask(m: &Mask) -> RleMask {
        RleMask::encode(m.width, m.height, m.data.iter().map(|&v| v >= 0.5))
    }

    /// Decode into one bool per pixel (true = fill), checking that the runs cover the image.
    /// The size is checked against the largest photo realfill opens before anything is
    /// allocated.
    pub fn decode(&self) -> std::result::Result<Vec<bool>, String> {
        let n = self.width as u128 * self.height as u128;
        if n == 0 || n > super::io::MAX_PIXELS as u128 {
            return Err(format!(
                "its mask is {}×{} pixels; a mask has the target's size, between 1 and {} MP",
                self.width,
                self.height,
                super::io::MAX_PIXELS / 1_000_000
            ));
        }
        let n = n as usize;
        let mut out = Vec::with_capacity(n);
        let mut fill = false;
        for &r in &self.runs {
            if r as u128 + out.len() as u128 > n as u128 {
                return Err(format!("mask runs cover more than its {}×{} pixels", self.width, self.height));
            }
            out.extend(std::iter::repeat_n(fill, r as usize));
            fill = !fill;
        }
        if out.len() != n {
            return Err(format!("mask runs cover {} of its {}×{} pixels", out.len(), self.width, self.height));
        }
        Ok(out)
    }

    pub fn to_mask(&self) -> std::result::Result<Mask, String> {
        let data = self.decode()?.into_iter().map(|f| if f { 1.0 } else { 0.0 }).collect();
        Ok(Mask { width: self.width, height: self.height, data })
    }
}

/// The file as stored (paths as written).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProjectFile {
    format: String,
    version: u32,
    target: PathBuf,
    #[serde(default)]
    references: Vec<PathBuf>,
    #[serde(default)]
    extension: Extension,
    mask: Option<RleMask>,
    #[serde(default)]
    settings: RunSettings,
}

/// A project with paths resolved against the project file's folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    pub target: PathBuf,
    pub references: Vec<PathBuf>,
    pub extension: Extension,
    /// At the target's size; None = nothing painted.
    pub mask: Option<RleMask>,
    pub settings: RunSettings,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// Write `p` relative to `base` when it lies below it (so a project folder can be moved).
fn relative(base: &Path, p: &Path) -> PathBuf {
    let abs = |q: &Path| q.canonicalize().unwrap_or_else(|_| q.to_path_buf());
    let (b, q) = (abs(base), abs(p));
    q.strip_prefix(&b).map(Path::to_path_buf).unwrap_or(q)
}

fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

impl Project {
    /// Parse a project's text; `path` is the file it came from (for messages and for resolving
    /// relative paths). Checks the format, the version and the mask's consistency, not the
    /// images (see [`Project::missing_files`]).
    pub fn parse(text: &str, path: &Path) -> Result<Project> {
        // Look at format and version before the rest, so a newer file gets the right message.
        let head: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::input(path, format!("not a realfill project (invalid JSON at line {}: {e})", e.line()))
        })?;
        if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(Error::input(path, format!("not a realfill project (no \"format\": \"{FORMAT}\")")));
        }
        let version = head.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version > VERSION as u64 {
            return Err(Error::input(
                path,
                format!(
                    "written by a newer realfill (project version {version}; this build reads up to {VERSION}); \
                     update realfill to open it"
                ),
            ));
        }
        if version == 0 {
            return Err(Error::input(path, "project has no valid \"version\"; the file is damaged"));
        }
        let f: ProjectFile =
            serde_json::from_value(head).map_err(|e| Error::input(path, format!("damaged project file: {e}")))?;
        if let Some(m) = &f.mask {
            m.decode().map_err(|e| Error::input(path, format!("damaged project file: {e}")))?;
        }
        if f.references.len() > crate::settings::MAX_REFERENCES {
            return Err(Error::input(
                path,
                format!(
                    "damaged project file: it lists {} references; a scene takes at most {}",
                    f.references.len(),
                    crate::settings::MAX_REFERENCES
                ),
            ));
        }
        let e = f.extension;
        if [e.left, e.top, e.right, e.bottom].iter().any(|&side| side > Extension::MAX_SIDE) {
            return Err(Error::input(
                path,
                format!("damaged project file: its extension adds more than {} pixels on a side", Extension::MAX_SIDE),
            ));
        }
        let base = folder_of(path);
        Ok(Project {
            target: resolve(base, &f.target),
            references: f.references.iter().map(|r| resolve(base, r)).collect(),
            extension: f.extension,
            mask: f.mask,
            settings: f.settings.clamped(),
        })
    }

    pub fn load(path: &Path) -> Result<Project> {
        if crate::input_file::absent(path) {
            return Err(Error::input(path, "project file not found"));
        }
        let text = crate::input_file::read_text(path, crate::input_file::PROJECT)?;
        Project::parse(&text, path)
    }

    /// Images the project points at that are not there any more, described for the user.
    /// (Something there that is not a photo — a FIFO, a folder — is not "moved": loading it
    /// says what it is.)
    pub fn missing_files(&self) -> Vec<String> {
        let mut v = Vec::new();
        if crate::input_file::absent(&self.target) {
            v.push(format!("target photo {}", self.target.display()));
        }
        for r in &self.references {
            if crate::input_file::absent(r) {
                v.push(format!("reference {}", r.display()));
            }
        }
        v
    }

    /// Serialise with paths relative to the folder `path` will be written to.
    pub fn to_text(&self, path: &Path) -> String {
        let base = folder_of(path);
        let f = ProjectFile {
            format: FORMAT.into(),
            version: VERSION,
            target: relative(base, &self.target),
            references: self.references.iter().map(|r| relative(base, r)).collect(),
            extension: self.extension,
            mask: self.mask.clone(),
            settings: self.settings.clone(),
        };
        serde_json::to_string_pretty(&f).unwrap_or_default()
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        super::io::write_atomic(path, self.to_text(path).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_round_trips_and_starts_with_keep() {
        let bits = [true, true, false, true, false, false];
        let r = RleMask::encode(3, 2, bits);
        assert_eq!(r.runs, vec![0, 2, 1, 1, 2]);
        assert_eq!(r.decode().unwrap(), bits.to_vec());
        let all_keep = RleMask::encode(2, 2, [false; 4]);
        assert_eq!(all_keep.runs, vec![4]);
    }

    #[test]
    fn rle_rejects_runs_that_do_not_cover_the_image() {
        let short = RleMask { width: 2, height: 2, runs: vec![1, 2] };
        assert!(short.decode().unwrap_err().contains("cover 3 of"));
        let long = RleMask { width: 2, height: 2, runs: vec![1, u64::MAX] };
        assert!(long.decode().unwrap_err().contains("more than"));
    }

    fn sample() -> Project {
        Project {
            target: PathBuf::from("/photos/t.jpg"),
            references: vec![PathBuf::from("/photos/r.jpg")],
            extension: Extension { left: 1, top: 2, right: 3, bottom: 4 },
            mask: Some(RleMask::encode(2, 1, [false, true])),
            settings: RunSettings { candidates: 3, ..Default::default() },
        }
    }

    #[test]
    fn project_round_trips_through_text() {
        let p = sample();
        let path = Path::new("/elsewhere/p.realfill");
        let back = Project::parse(&p.to_text(path), path).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn relative_paths_resolve_against_the_project_folder() {
        let text = r#"{"format":"realfill-project","version":1,"target":"a/t.png","references":["r.png"],"mask":null}"#;
        let p = Project::parse(text, Path::new("/work/x/p.realfill")).unwrap();
        assert_eq!(p.target, PathBuf::from("/work/x/a/t.png"));
        assert_eq!(p.references, vec![PathBuf::from("/work/x/r.png")]);
        assert_eq!(p.settings, RunSettings::default());
    }

    #[test]
    fn bad_projects_say_what_is_wrong() {
        let path = Path::new("p.realfill");
        let msg = |t: &str| Project::parse(t, path).unwrap_err().to_string();
        assert!(msg("{not json").contains("invalid JSON"));
        assert!(msg(r#"{"format":"other","version":1}"#).contains("not a realfill project"));
        assert!(msg(r#"{"format":"realfill-project","version":9,"target":"t"}"#).contains("newer realfill"));
        assert!(msg(r#"{"format":"realfill-project","version":1}"#).contains("damaged"));
        let bad_mask =
            r#"{"format":"realfill-project","version":1,"target":"t","mask":{"width":2,"height":2,"runs":[1]}}"#;
        assert!(msg(bad_mask).contains("cover 1 of"));
        assert!(msg(bad_mask).starts_with("p.realfill: "));
    }

    /// Numbers a crafted file can hold are checked before anything is sized by them.
    #[test]
    fn sizes_and_counts_beyond_what_a_project_holds_are_refused_before_allocating() {
        let path = Path::new("p.realfill");
        let msg = |fields: &str| {
            let t = format!(r#"{{"format":"realfill-project","version":1,"target":"t.png",{fields}}}"#);
            Project::parse(&t, path).unwrap_err().to_string()
        };
        for (w, h, run) in [(100_000u64, 100_000u64, 10_000_000_000u64), (1_000_000, 1_000_000, 1_000_000_000_000)] {
            let e = msg(&format!(r#""mask":{{"width":{w},"height":{h},"runs":[{run}]}}"#));
            assert!(e.starts_with("p.realfill: ") && e.contains(&format!("mask is {w}×{h}")), "{e}");
        }
        let e = msg(r#""mask":{"width":0,"height":5,"runs":[]}"#);
        assert!(e.contains("mask is 0×5"), "{e}");
        let refs = vec!["\"r.png\""; crate::settings::MAX_REFERENCES + 1].join(",");
        let e = msg(&format!(r#""references":[{refs}]"#));
        assert!(e.contains(&format!("lists {} references", crate::settings::MAX_REFERENCES + 1)), "{e}");
        let e = msg(r#""extension":{"left":0,"top":0,"right":1000000000000,"bottom":0}"#);
        assert!(e.contains("extension adds more than"), "{e}");
    }

    #[test]
    fn a_project_that_is_not_a_regular_file_or_too_large_is_refused_by_name() {
        let d = std::env::temp_dir().join(format!("realfill-project-special-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let fifo = d.join("pipe.realfill");
        crate::input_file::tests::mkfifo(&fifo);
        let e = Project::load(&fifo).unwrap_err().to_string();
        assert!(e.contains("pipe.realfill") && e.contains("FIFO"), "{e}");
        let zero = d.join("zero.realfill");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(Project::load(&zero).unwrap_err().to_string().contains("a device"));
        let big = d.join("big.realfill");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(crate::input_file::PROJECT.max_bytes + 1).unwrap();
        let e = Project::load(&big).unwrap_err().to_string();
        assert!(e.contains("more than a project file can be"), "{e}");
    }

    #[test]
    fn moved_images_are_named() {
        let p = sample();
        let missing = p.missing_files();
        assert_eq!(missing.len(), 2);
        assert!(missing[0].contains("/photos/t.jpg") && missing[1].contains("reference /photos/r.jpg"));
    }

    #[test]
    fn settings_from_a_hand_edited_file_are_clamped() {
        let s =
            RunSettings { size: 5, steps: 0, seed: 1, candidates: 99, learn_steps: 0, ..Default::default() }.clamped();
        let l = &crate::settings::LIMITS;
        assert_eq!((s.size, s.steps, s.candidates, s.learn_steps), (*l.size.start(), 1, *l.candidates.end(), 1));
    }
}
