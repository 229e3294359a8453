//! What the app tells the person at the bottom of the window: notes, warnings and errors, some
//! with a button that does what the message offers. Every part reports here.

use super::commands::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug)]
pub struct Message {
    pub level: Level,
    pub text: String,
    /// A button beside the message, and what it does.
    pub action: Option<(String, Command)>,
}

/// The messages, oldest first (the bottom bar shows the newest few).
#[derive(Default)]
pub struct Messages(Vec<Message>);

impl Messages {
    pub fn all(&self) -> &[Message] {
        &self.0
    }

    pub fn push(&mut self, m: Message) {
        self.0.push(m);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push(Message { level: Level::Info, text: text.into(), action: None });
    }
    pub fn warn(&mut self, text: impl Into<String>) {
        self.push(Message { level: Level::Warning, text: text.into(), action: None });
    }
    pub fn error(&mut self, text: impl Into<String>) {
        self.push(Message { level: Level::Error, text: text.into(), action: None });
    }

    pub fn dismiss(&mut self, i: usize) {
        if i < self.0.len() {
            self.0.remove(i);
        }
    }

    /// Another document opens: what was said about the previous one no longer applies.
    /// Errors stay until dismissed.
    pub fn forget_notes(&mut self) {
        self.0.retain(|m| m.level == Level::Error);
    }
}
