//! The library's error type. Every message names the file (when there is one), the problem,
//! and what to do about it, so the CLI and the app can show it as one line.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the user gave us could not be used.
    #[error("{}: {problem}", path.display())]
    Input { path: PathBuf, problem: String },
    /// The result could not be written.
    #[error("cannot write {}: {problem}", path.display())]
    Output { path: PathBuf, problem: String },
    /// Inconsistent settings or inputs (no file to blame).
    #[error("{0}")]
    Invalid(String),
    /// The job was cancelled; nothing was written.
    #[error("cancelled")]
    Cancelled,
    /// The model or the backend failed.
    #[error("engine: {0}")]
    Engine(String),
    /// The GPU server cannot be used: not reached, refused, or lost during a job.
    #[error("{0}")]
    Server(String),
}

impl Error {
    pub fn input(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Error::Input { path: path.as_ref().to_path_buf(), problem: problem.into() }
    }
    pub fn output(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Error::Output { path: path.as_ref().to_path_buf(), problem: problem.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
