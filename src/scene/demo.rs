//! The bundled demo scene (`assets/demo`: a target with a painted mask and its reference
//! photos): where it lives and how it loads. The app opens it, `fill --demo` fills it and
//! `bench` times fills of it.

use std::path::{Path, PathBuf};

use super::Photo;
use super::io::{load_mask, load_photo};
use super::raster::Mask;
use crate::error::{Error, Result};

/// Folder of the demo scene: `$REALFILL_ASSETS/demo`, else `assets/demo` in the checkout
/// realfill was built from.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REALFILL_ASSETS") {
        return PathBuf::from(d).join("demo");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets").join("demo")
}

/// The demo scene's files.
pub struct DemoFiles {
    pub target: PathBuf,
    pub mask: PathBuf,
    pub refs: Vec<PathBuf>,
}

/// The files of a folder, sorted by name (sub-folders and hidden files left out: an editor's
/// lock file `.#name` is a dangling link). An entry that is not a regular file (a FIFO, a
/// device, a dangling link) is an error naming it, not skipped: the person meant it as one
/// of the photos.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::input(dir, format!("cannot list folder: {e}")))?;
    let mut v = Vec::new();
    for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
        let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !p.is_dir() && !hidden {
            crate::input_file::check(&p)?;
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

pub fn files() -> Result<DemoFiles> {
    let d = dir();
    Ok(DemoFiles { target: d.join("target.png"), mask: d.join("mask.png"), refs: list_files(&d.join("refs"))? })
}

/// The demo scene loaded: target, painted mask (the target's size), references.
pub fn load() -> Result<(Photo, Mask, Vec<Photo>)> {
    let f = files()?;
    let target = load_photo(&f.target)?;
    let mask = load_mask(&f.mask)?;
    let refs = f.refs.iter().map(|r| load_photo(r)).collect::<Result<Vec<_>>>()?;
    Ok((target, mask, refs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_scene_loads_with_a_mask_of_the_target_size_and_references() {
        let (target, mask, refs) = super::load().unwrap();
        assert_eq!((mask.width, mask.height), (target.width(), target.height()));
        assert!(!mask.is_empty());
        assert_eq!(refs.len(), 2);
    }
}
