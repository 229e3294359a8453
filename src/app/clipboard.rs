//! Images through the system clipboard (issue 15): Ctrl+V pastes an image as a reference (or
//! as the photo when none is open); Edit › Paste as photo / as reference say which; Ctrl+C
//! (Edit › Copy image) copies the current image. One `arboard::Clipboard` lives as long as the
//! app: on X11 a copied image is served by the program that copied it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::scene::Photo;

/// What a pasted image becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasteAs {
    /// A reference when a photo is open, else the photo (Ctrl+V).
    Auto,
    Photo,
    Reference,
}

/// The name a pasted image goes by (in messages, and the export's default name).
pub const PASTED: &str = "pasted.png";

/// The app's clipboard, opened on first use (a machine without a display has none).
#[derive(Clone, Default)]
pub struct Clipboard(Arc<Mutex<Option<arboard::Clipboard>>>);

fn unreachable(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot reach the clipboard: {e}"))
}

impl Clipboard {
    fn with<T>(&self, f: impl FnOnce(&mut arboard::Clipboard) -> Result<T>) -> Result<T> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(arboard::Clipboard::new().map_err(unreachable)?);
        }
        f(guard.as_mut().expect("opened above"))
    }

    /// The image on the clipboard, as a photo.
    pub fn paste(&self) -> Result<Photo> {
        let data = self.with(|c| {
            c.get_image().map_err(|e| match e {
                arboard::Error::ContentNotAvailable => {
                    Error::Invalid("the clipboard holds no image; copy one (or take a screenshot) first".into())
                }
                e => unreachable(e),
            })
        })?;
        photo_of(data.width, data.height, data.bytes.into_owned())
    }

    /// Put `img` on the clipboard.
    pub fn copy(&self, img: &image::DynamicImage) -> Result<()> {
        let rgba = img.to_rgba8();
        let (width, height) = (rgba.width() as usize, rgba.height() as usize);
        let data = arboard::ImageData { width, height, bytes: std::borrow::Cow::Owned(rgba.into_raw()) };
        self.with(|c| c.set_image(data).map_err(unreachable))
    }
}

/// A photo from RGBA bytes (the clipboard's layout); transparent pixels become part of the
/// fill region, as with a transparent PNG.
pub fn photo_of(width: usize, height: usize, rgba: Vec<u8>) -> Result<Photo> {
    if width == 0 || height == 0 || width * height * 4 != rgba.len() {
        return Err(Error::Invalid(format!(
            "the clipboard's image is malformed ({width}×{height}, {} bytes)",
            rgba.len()
        )));
    }
    let img = image::RgbaImage::from_raw(width as u32, height as u32, rgba).expect("size checked");
    let transparent = img.pixels().any(|p| p[3] < 128).then(|| crate::scene::Mask {
        width,
        height,
        data: img.pixels().map(|p| if p[3] < 128 { 1.0 } else { 0.0 }).collect(),
    });
    let rgb = image::DynamicImage::ImageRgb8(image::DynamicImage::ImageRgba8(img).to_rgb8());
    Ok(Photo::from_image(PathBuf::from(PASTED), rgb, transparent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipboard_pixels_become_a_photo_and_transparency_becomes_fill() {
        let mut rgba = vec![200u8; 4 * 6 * 4];
        rgba[3] = 0; // pixel (0, 0) transparent
        let p = photo_of(6, 4, rgba).unwrap();
        assert_eq!((p.width(), p.height()), (6, 4));
        assert_eq!(p.original.to_rgb8().get_pixel(5, 3).0, [200, 200, 200]);
        let t = p.transparent.expect("a transparent pixel");
        assert_eq!((t.get(0, 0), t.get(1, 0)), (1.0, 0.0));
        assert!(photo_of(6, 4, vec![0; 10]).unwrap_err().to_string().contains("malformed"));
    }
}
