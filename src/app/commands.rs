//! What the person asked for this frame. Panels, menus and keyboard shortcuts push
//! `Command`s; the app (`apply_commands` in `app/mod.rs`) carries them out once, at the end of
//! the frame, so every way of asking for a thing takes the same path. Shortcuts live in one table, and
//! menus show their keys with egui's own formatting (`Context::format_shortcut`).

use egui::{Key, KeyboardShortcut, Modifiers};

use super::canvas::Tool;
use super::clipboard::PasteAs;
use super::dialogs::Dialog;
use crate::scene::Extension;

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    OpenDialog(Dialog),
    Undo,
    Redo,
    Learn,
    Fill,
    Cancel,
    /// Show candidate i on the canvas.
    PickCandidate(usize),
    SetTool(Tool),
    /// Fit the canvas to the window.
    Fit,
    /// One photo pixel per screen pixel.
    ActualPixels,
    InvertMask,
    ClearMask,
    /// Grow the mask by this many pixels (shrink when negative).
    GrowMask(f32),
    RemoveReference(usize),
    SetExtension(Extension),
    ToggleBefore,
    /// Before and after side by side, split by a draggable line.
    ToggleSplit,
    /// Tint the shown fill by where its pixels came from.
    ToggleSourceTint,
    /// Switch the engine to Stable Diffusion and fill again.
    FillWithStableDiffusion,
    DismissMessage(usize),
    /// Save the project where it was saved (asks where the first time).
    Save,
    /// Zoom the view about the canvas's centre by this factor.
    Zoom(f32),
    /// Show or hide the list of keyboard shortcuts.
    ToggleShortcuts,
    /// Close the window (asking first about unsaved changes).
    Quit,
    /// Open a recent photo or project.
    OpenRecent(std::path::PathBuf),
    /// Paste the clipboard's image (as a reference when a photo is open, else as the photo).
    Paste(PasteAs),
    /// Copy the current image to the clipboard.
    CopyImage,
    /// Compute on the GPU server typed in the Run panel (connects at once).
    UseGpuServer,
    /// Compute on this computer again.
    UseThisComputer,
}

/// A keyboard shortcut, the command it pushes, and what it does in words (the shortcut list).
pub struct Shortcut {
    pub keys: KeyboardShortcut,
    pub command: Command,
    pub what: &'static str,
}

pub const UNDO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Z);
pub const REDO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::Z);
pub const REDO_ALT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Y);
pub const OPEN: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::O);
pub const OPEN_PROJECT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::O);
pub const SAVE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::S);
pub const SAVE_AS: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::S);
pub const EXPORT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::E);
pub const BRUSH: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::B);
pub const ERASER: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::E);
pub const RECTANGLE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::M);
pub const LASSO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::L);
pub const FIT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::F);
pub const FIT_ALT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Num0);
pub const ACTUAL_PIXELS: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Num1);
pub const ACTUAL_PIXELS_ALT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Num1);
pub const ZOOM_IN: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Plus);
pub const ZOOM_IN_ALT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Equals);
pub const ZOOM_OUT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Minus);
pub const SHORTCUTS: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::F1);
pub const CANCEL: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Escape);
pub const FILL: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter);
/// Photoshop's keys for inverting and dropping a selection.
pub const INVERT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::I);
pub const CLEAR: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::D);
/// Lightroom's key for before/after side by side.
pub const SPLIT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Y);
pub const SOURCES: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::T);
/// Copy and paste reach the app as egui's Copy and PasteImage events (egui-winit turns these
/// keys into them); the constants are for menus and the shortcut list.
pub const COPY: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::C);
pub const PASTE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::V);
pub const QUIT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Q);

/// Every shortcut, most specific first (Ctrl+Shift+Z before Ctrl+Z: egui matches modifiers
/// logically, so the shorter one would also match the longer).
pub fn shortcuts() -> Vec<Shortcut> {
    let s = |keys, command, what| Shortcut { keys, command, what };
    vec![
        s(REDO, Command::Redo, "Redo"),
        s(INVERT, Command::InvertMask, "Invert the mask"),
        s(OPEN_PROJECT, Command::OpenDialog(Dialog::OpenProject), "Open a project"),
        s(SAVE_AS, Command::OpenDialog(Dialog::SaveProject), "Save the project as…"),
        s(EXPORT, Command::OpenDialog(Dialog::Export), "Export the image"),
        s(REDO_ALT, Command::Redo, "Redo"),
        s(UNDO, Command::Undo, "Undo"),
        s(OPEN, Command::OpenDialog(Dialog::OpenPhoto), "Open a photo"),
        s(SAVE, Command::Save, "Save the project"),
        s(FILL, Command::Fill, "Fill"),
        s(CLEAR, Command::ClearMask, "Clear the mask"),
        s(QUIT, Command::Quit, "Quit (asks about unsaved changes)"),
        s(FIT_ALT, Command::Fit, "Fit the canvas to the window"),
        s(ACTUAL_PIXELS_ALT, Command::ActualPixels, "100 %: one photo pixel per screen pixel"),
        s(BRUSH, Command::SetTool(Tool::Brush), "Brush: paint what to replace"),
        s(ERASER, Command::SetTool(Tool::Eraser), "Eraser"),
        s(RECTANGLE, Command::SetTool(Tool::Rectangle), "Rectangle selection (Alt: take away)"),
        s(LASSO, Command::SetTool(Tool::Lasso), "Lasso selection (Alt: take away)"),
        s(FIT, Command::Fit, "Fit the canvas to the window"),
        s(ACTUAL_PIXELS, Command::ActualPixels, "100 %"),
        s(ZOOM_IN, Command::Zoom(1.25), "Zoom in"),
        s(ZOOM_IN_ALT, Command::Zoom(1.25), "Zoom in"),
        s(ZOOM_OUT, Command::Zoom(0.8), "Zoom out"),
        s(SPLIT, Command::ToggleSplit, "Before and after side by side"),
        s(SOURCES, Command::ToggleSourceTint, "Tint the fill by where its pixels came from"),
        s(SHORTCUTS, Command::ToggleShortcuts, "This list of shortcuts"),
        s(CANCEL, Command::Cancel, "Cancel the running job"),
    ]
}

/// The commands whose shortcuts were pressed this frame (none while a text field has focus).
pub fn pressed(ctx: &egui::Context) -> Vec<Command> {
    if ctx.egui_wants_keyboard_input() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for s in shortcuts() {
        if s.keys == CANCEL {
            // Esc first closes an open menu or popup (egui's own handling, which a consumed key
            // would never reach) and prompts (which read it too); only then does it cancel.
            // (Popup memory persists between frames; `any_popup_open` is reset each pass,
            // before the menus of this frame are drawn.)
            if !egui::Popup::is_any_open(ctx) && ctx.input(|i| i.key_pressed(Key::Escape) && i.modifiers.is_none()) {
                out.push(s.command);
            }
        } else if ctx.input_mut(|i| i.consume_shortcut(&s.keys)) {
            out.push(s.command);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_shortcuts_share_keys_and_longer_chords_come_first() {
        let all = shortcuts();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.keys, b.keys, "{:?} and {:?}", a.command, b.command);
                if a.keys.logical_key == b.keys.logical_key {
                    // A later entry must not be a superset of an earlier one's modifiers.
                    assert!(!b.keys.modifiers.contains(a.keys.modifiers) || a.keys.modifiers == b.keys.modifiers);
                }
            }
        }
    }
}
