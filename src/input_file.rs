//! Opening the files a person hands realfill (photos, masks, projects, model folders, the GPU
//! server's token, cached models): only regular files are read, and each kind with a cap on
//! its size. A named pipe opened for reading blocks until a writer comes and `/dev/zero` never
//! ends, so the file is opened without blocking (`O_NONBLOCK`) and looked at through the open
//! handle (`fstat`: no window between the look and the read); only then is it read.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// A kind of input file and the largest such file realfill reads.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// What the file is, for messages ("config file", …).
    pub what: &'static str,
    pub max_bytes: u64,
}

/// The GPU server's access token (64 hexadecimal digits; room for a newline and a comment).
pub const TOKEN: Kind = Kind { what: "token file", max_bytes: 4 << 10 };
/// A JSON config, a tokenizer's vocabulary or merges (Stable Diffusion 2's largest is 1.6 MB).
pub const CONFIG: Kind = Kind { what: "config file", max_bytes: 32 << 20 };
/// A project file: its mask's run lengths dominate; 64 MiB holds a mask of the largest photo
/// with hundreds of edges per row.
pub const PROJECT: Kind = Kind { what: "project file", max_bytes: 64 << 20 };
/// Tensors read whole: a LoRA adapter file (SD-2's at rank 64 is about 100 MB), the
/// developer tools' check files. (A model's weights are memory-mapped, not read.)
pub const TENSORS: Kind = Kind { what: "tensor file", max_bytes: 4 << 30 };

/// What a file that is neither a regular file nor a folder is, for messages ("a device", …).
pub fn special_file_kind(t: &fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_fifo() {
        Some("a named pipe (FIFO)")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

/// Why `meta` is not a regular file, in words; None for a regular file.
fn not_regular(meta: &fs::Metadata) -> Option<String> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("is a folder, not a file".into())
    } else {
        let kind = special_file_kind(&t).unwrap_or("a special file");
        Some(format!("is {kind}, not a regular file; realfill reads only regular files"))
    }
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::input(path, "file not found; check the path"),
        std::io::ErrorKind::PermissionDenied => Error::input(path, "permission denied; make the file readable"),
        _ => Error::input(path, format!("cannot open: {e}")),
    }
}

/// Whether nothing is at `path` (a folder on the way that cannot be searched is not
/// "nothing": reading then says "permission denied").
pub fn absent(path: &Path) -> bool {
    matches!(fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Open `path` for reading if it is a regular file (a symbolic link is followed); a FIFO,
/// device, socket or folder is refused with the file named, without blocking on it.
pub fn open(path: &Path) -> Result<fs::File> {
    // Looked at before it is opened: opening some devices acts (a tape rewinds, a watchdog
    // arms, a terminal could become ours).
    if let Some(why) = fs::metadata(path).ok().as_ref().and_then(not_regular) {
        return Err(Error::input(path, why));
    }
    // O_NONBLOCK: opening a FIFO swapped in since returns at once instead of waiting for a
    // writer; it changes nothing for a regular file, which is all that is read through the
    // handle. The handle is looked at again (fstat): no window between the look and the read.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let meta = f.metadata().map_err(|e| Error::input(path, format!("cannot look at it: {e}")))?;
    match not_regular(&meta) {
        Some(why) => Err(Error::input(path, why)),
        None => Ok(f),
    }
}

/// What is wrong with reading `path` where realfill cannot hand over an open file (a library
/// that opens the path itself): not a regular file. Its size in bytes otherwise.
pub fn check(path: &Path) -> Result<u64> {
    let meta = fs::metadata(path).map_err(|e| open_error(path, e))?;
    match not_regular(&meta) {
        Some(why) => Err(Error::input(path, why)),
        None => Ok(meta.len()),
    }
}

fn too_large(path: &Path, kind: Kind, len: u64) -> Error {
    Error::input(
        path,
        format!(
            "is {} bytes, more than a {} can be ({} bytes); it is not a {} or it is damaged",
            len, kind.what, kind.max_bytes, kind.what
        ),
    )
}

/// The bytes of `path`, a regular file of at most `kind.max_bytes`.
pub fn read(path: &Path, kind: Kind) -> Result<Vec<u8>> {
    let f = open(path)?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > kind.max_bytes {
        return Err(too_large(path, kind, len));
    }
    // The size is read again through the cap: a file that grows meanwhile stops at it.
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(kind.max_bytes + 1).read_to_end(&mut bytes).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > kind.max_bytes {
        return Err(too_large(path, kind, bytes.len() as u64));
    }
    Ok(bytes)
}

/// The text of `path` (UTF-8), a regular file of at most `kind.max_bytes`.
pub fn read_text(path: &Path, kind: Kind) -> Result<String> {
    String::from_utf8(read(path, kind)?)
        .map_err(|_| Error::input(path, format!("is not text (not UTF-8); it is not a {}", kind.what)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("realfill-input-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    pub(crate) fn mkfifo(p: &Path) {
        assert!(std::process::Command::new("mkfifo").arg(p).status().unwrap().success());
    }

    #[test]
    fn special_files_are_refused_by_name_without_blocking() {
        let d = dir("special");
        let fifo = d.join("pipe.json");
        mkfifo(&fifo);
        // No writer ever comes: a blocking open would hang this test.
        let e = read_text(&fifo, CONFIG).unwrap_err().to_string();
        assert!(e.contains("pipe.json") && e.contains("named pipe (FIFO)"), "{e}");
        assert!(check(&fifo).unwrap_err().to_string().contains("FIFO"));
        let zero = d.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read(&zero, TOKEN).unwrap_err().to_string();
        assert!(e.contains("zero") && e.contains("a device"), "{e}");
        assert!(read(&d, CONFIG).unwrap_err().to_string().contains("is a folder"));
        let e = read(&d.join("nope"), CONFIG).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("not found"), "{e}");
    }

    #[test]
    fn files_above_their_kinds_cap_are_refused_and_text_must_be_utf8() {
        let d = dir("cap");
        let big = d.join("token");
        fs::write(&big, vec![b'a'; TOKEN.max_bytes as usize + 1]).unwrap();
        let e = read_text(&big, TOKEN).unwrap_err().to_string();
        assert!(e.contains("token file") && e.contains("4097 bytes"), "{e}");
        fs::write(&big, b"abc\n").unwrap();
        assert_eq!(read_text(&big, TOKEN).unwrap(), "abc\n");
        fs::write(&big, [0xff, 0xfe]).unwrap();
        assert!(read_text(&big, TOKEN).unwrap_err().to_string().contains("not text"));
    }
}
