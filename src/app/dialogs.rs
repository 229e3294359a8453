//! The file dialogs the app asks for: what each picks (one file, several, a name to save
//! under, a folder), its title and the files it lists. The system's dialog (`file_dialogs`)
//! and realfill's own (`file_browser`) both follow them.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialog {
    OpenPhoto,
    AddReferences,
    OpenProject,
    SaveProject,
    Export,
    /// A mask image (white = fill) of the photo's size.
    ImportMask,
    ExportMask,
    /// A Stable Diffusion model folder (diffusers layout).
    SdModel,
}

/// What a dialog returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    One,
    Many,
    Save,
    Folder,
}

const IMAGES: &[&str] = &["png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp", "gif", "pnm", "ppm", "tga", "qoi"];
const EXPORTS: &[(&str, &[&str])] =
    &[("PNG", &["png"]), ("JPEG", &["jpg", "jpeg"]), ("TIFF", &["tif", "tiff"]), ("WebP", &["webp"])];

impl Dialog {
    pub fn pick(self) -> Pick {
        match self {
            Dialog::OpenPhoto | Dialog::OpenProject | Dialog::ImportMask => Pick::One,
            Dialog::AddReferences => Pick::Many,
            Dialog::SaveProject | Dialog::Export | Dialog::ExportMask => Pick::Save,
            Dialog::SdModel => Pick::Folder,
        }
    }

    /// The filters the system dialog offers: (name, extensions).
    pub fn filters(self) -> Vec<(&'static str, &'static [&'static str])> {
        const PROJECT: &[&str] = &[crate::scene::project::EXTENSION];
        match self {
            Dialog::OpenPhoto | Dialog::AddReferences => vec![("Photos", IMAGES)],
            Dialog::ImportMask => vec![("Mask images", IMAGES)],
            Dialog::OpenProject | Dialog::SaveProject => vec![("realfill project", PROJECT)],
            Dialog::Export => EXPORTS.to_vec(),
            Dialog::ExportMask => vec![("PNG", &["png"])],
            Dialog::SdModel => Vec::new(),
        }
    }

    /// Whether a file of this name is one the dialog lists (by extension, any case).
    pub fn accepts(self, path: &std::path::Path) -> bool {
        let Some(ext) = path.extension().map(|e| e.to_string_lossy().to_lowercase()) else { return false };
        self.filters().iter().any(|(_, exts)| exts.contains(&ext.as_str()))
    }

    pub fn title(self) -> &'static str {
        match self {
            Dialog::OpenPhoto => "Open a photo",
            Dialog::AddReferences => "Add reference photos",
            Dialog::OpenProject => "Open a project",
            Dialog::SaveProject => "Save the project as",
            Dialog::Export => "Export the image",
            Dialog::ImportMask => "Import a mask",
            Dialog::ExportMask => "Export the mask",
            Dialog::SdModel => "Choose a Stable Diffusion model folder",
        }
    }

    /// The label of the button that chooses.
    pub fn verb(self) -> &'static str {
        match self.pick() {
            Pick::One => "Open",
            Pick::Many => "Add",
            Pick::Save => "Save",
            Pick::Folder => "Choose this folder",
        }
    }

    pub fn empty_text(self) -> &'static str {
        match self {
            Dialog::OpenProject | Dialog::SaveProject => "no folders or realfill projects here",
            Dialog::SdModel => "no folders here",
            _ => "no folders or photos here",
        }
    }
}
