//! What the person asked for this frame. Panels, menus and keyboard shortcuts push
//! `Command`s; `RealfillApp::apply_commands` carries them out once, at the end of the frame,
//! so every way of asking for a thing takes the same path. Shortcuts live in one table, and
//! menus show their keys with egui's own formatting (`Context::format_shortcut`).

use egui::{Key, KeyboardShortcut, Modifiers};

use super::canvas::Tool;
use super::tasks::Dialog;
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
    RemoveReference(usize),
    SetExtension(Extension),
    ToggleBefore,
    DismissMessage(usize),
}

/// A keyboard shortcut and the command it pushes.
pub struct Shortcut {
    pub keys: KeyboardShortcut,
    pub command: Command,
}

pub const UNDO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Z);
pub const REDO: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::Z);
pub const REDO_ALT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Y);
pub const BRUSH: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::B);
pub const ERASER: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::E);
pub const FIT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::F);
pub const ACTUAL_PIXELS: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Num1);
pub const CANCEL: KeyboardShortcut = KeyboardShortcut::new(Modifiers::NONE, Key::Escape);

/// Every shortcut, most specific first (Ctrl+Shift+Z before Ctrl+Z: egui matches modifiers
/// logically, so the shorter one would also match the longer).
pub fn shortcuts() -> Vec<Shortcut> {
    vec![
        Shortcut { keys: REDO, command: Command::Redo },
        Shortcut { keys: REDO_ALT, command: Command::Redo },
        Shortcut { keys: UNDO, command: Command::Undo },
        Shortcut { keys: BRUSH, command: Command::SetTool(Tool::Brush) },
        Shortcut { keys: ERASER, command: Command::SetTool(Tool::Eraser) },
        Shortcut { keys: FIT, command: Command::Fit },
        Shortcut { keys: ACTUAL_PIXELS, command: Command::ActualPixels },
        Shortcut { keys: CANCEL, command: Command::Cancel },
    ]
}

/// The commands whose shortcuts were pressed this frame (none while a text field has focus).
pub fn pressed(ctx: &egui::Context) -> Vec<Command> {
    if ctx.egui_wants_keyboard_input() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for s in shortcuts() {
        if ctx.input_mut(|i| i.consume_shortcut(&s.keys)) {
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
