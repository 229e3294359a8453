//! Just enough of WebSocket (RFC 6455) for the server's gate and the client's watchdog to
//! read a connection's opening and its frame headers without trusting either: heads are read
//! up to a size cap, everything by a deadline, and a frame's payload is never allocated by
//! what its header declares (it is streamed through a fixed buffer, or read only when small).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The most an HTTP opening (request or response head) may take.
pub const HEAD_MAX: usize = 8 * 1024;

/// Bytes moved per read or write when a frame is streamed through.
pub const CHUNK: usize = 64 * 1024;

pub const OP_BINARY: u8 = 0x2;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Why reading an opening or a frame stopped.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing (more) arrived by the deadline.
    Silent,
    /// The other side closed the connection.
    Closed,
    /// More than the cap was sent (bytes declared or sent).
    TooLarge(u64),
    /// Bytes that are not what the protocol allows here.
    Malformed(String),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Silent => write!(f, "nothing arrived in time"),
            ReadError::Closed => write!(f, "the connection closed"),
            ReadError::TooLarge(n) => write!(f, "{n} bytes, more than allowed"),
            ReadError::Malformed(why) => write!(f, "{why}"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn io_error(e: io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::Silent,
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ReadError::Closed,
        _ => ReadError::Io(e),
    }
}

/// A stream read with a deadline: each read waits at most until `deadline` (None: the
/// stream's own timeout, as set). Bytes already read past a head come first.
pub struct Reader<'a> {
    pub stream: &'a TcpStream,
    pub pending: Vec<u8>,
    pub deadline: Option<Instant>,
}

impl Reader<'_> {
    /// Some bytes (at least one), by the deadline.
    pub fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        if !self.pending.is_empty() {
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Silent);
            }
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(ReadError::Io)?;
        }
        loop {
            match (&*self.stream).read(buf) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut at = 0;
        while at < buf.len() {
            at += self.read_some(&mut buf[at..])?;
        }
        Ok(())
    }

    /// An HTTP head up to and including its blank line, at most [`HEAD_MAX`] bytes; bytes
    /// after it stay pending.
    pub fn head(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        loop {
            let want = (HEAD_MAX + 1 - head.len()).min(buf.len());
            let n = self.read_some(&mut buf[..want])?;
            // Only the new bytes (and the three before them) can complete the blank line.
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&head[from..], b"\r\n\r\n").map(|e| e + from) {
                let rest = head.split_off(end + 4);
                self.pending.splice(0..0, rest);
                return Ok(head);
            }
            if head.len() > HEAD_MAX {
                return Err(ReadError::TooLarge(head.len() as u64));
            }
        }
    }

    /// The next frame's header.
    pub fn frame_header(&mut self) -> Result<FrameHeader, ReadError> {
        let mut raw = vec![0u8; 2];
        self.read_exact(&mut raw)?;
        let (fin, opcode, masked) = (raw[0] & 0x80 != 0, raw[0] & 0x0F, raw[1] & 0x80 != 0);
        if raw[0] & 0x70 != 0 {
            return Err(ReadError::Malformed("a frame with reserved bits set (no extension was agreed)".into()));
        }
        let len = match raw[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                self.read_exact(&mut b)?;
                raw.extend_from_slice(&b);
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.read_exact(&mut b)?;
                raw.extend_from_slice(&b);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut mask = [0u8; 4];
        if masked {
            self.read_exact(&mut mask)?;
            raw.extend_from_slice(&mask);
        }
        Ok(FrameHeader { fin, opcode, masked, len, mask, raw })
    }

    /// Copy `len` payload bytes to `out` through `buf` (the caller's, kept across frames);
    /// `progress` is called after each chunk written (the watchdog counts it as a sign of
    /// life).
    pub fn stream_payload(
        &mut self,
        len: u64,
        out: &mut impl Write,
        buf: &mut [u8],
        mut progress: impl FnMut(),
    ) -> Result<(), ReadError> {
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self.read_some(&mut buf[..want])?;
            out.write_all(&buf[..n]).map_err(io_error)?;
            progress();
            left -= n as u64;
        }
        Ok(())
    }
}

/// A frame's header as it arrived (`raw`), and what it says.
#[derive(Debug)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub len: u64,
    pub mask: [u8; 4],
    pub raw: Vec<u8>,
}

/// `payload` unmasked with `mask` (the same operation masks it).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A client's ping carrying `id` (clients mask every frame): the server's pong echoes the id,
/// so only the answer to this ping counts as one.
pub fn client_ping(id: u32) -> [u8; 10] {
    let mask = *b"RFIL";
    let mut payload = id.to_be_bytes();
    unmask(&mut payload, mask);
    let mut f = [0x80 | OP_PING, 0x80 | 4, 0, 0, 0, 0, 0, 0, 0, 0];
    f[2..6].copy_from_slice(&mask);
    f[6..].copy_from_slice(&payload);
    f
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What an opening request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub path: String,
    pub key: String,
}

/// Read a client's opening: `GET PATH HTTP/1.1` asking to become a WebSocket. Only plain
/// ASCII lines ending in CR LF pass: a bare LF (which another parser would take for a line's
/// end) or a control byte is refused, so what the gate read is what anyone reads.
pub fn parse_upgrade(head: &[u8]) -> Result<Upgrade, String> {
    let body = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let stray = body.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => body.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || body[i - 1] != b'\r',
        b'\t' => false,
        b => !(0x20..0x7F).contains(&b),
    });
    if stray {
        return Err("an opening with a bare line feed, a control byte or non-ASCII bytes".into());
    }
    let text = std::str::from_utf8(head).map_err(|_| "an opening that is not text".to_string())?;
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    let (Some("GET"), Some(path), Some("HTTP/1.1")) = (method, path, version) else {
        return Err(format!("not a WebSocket opening ({:?})", request.chars().take(60).collect::<String>()));
    };
    let path: String = path.chars().take(60).collect();
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    // 16 random bytes in base64 (RFC 6455, 4.1).
    let key = header("sec-websocket-key")
        .filter(|k| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k).is_ok_and(|b| b.len() == 16));
    match (upgrade, key) {
        (true, Some(key)) => Ok(Upgrade { path: path.to_string(), key }),
        _ => Err(format!("an HTTP request for {path:?} that is not a WebSocket opening")),
    }
}

/// The status code of a server's opening answer.
pub fn response_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// The opening the gate sends burn for a client's checked `key`: built, not replayed, so
/// nothing the client wrote around it reaches burn.
pub fn session_request(key: &str) -> String {
    format!(
        "GET /session HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The server's answer accepting an opening with `key`.
pub fn switching_protocols(key: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    let accept = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// An HTTP refusal that closes the connection.
pub fn refusal(status: &str) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_accept_key_is_the_rfcs() {
        // RFC 6455, section 1.3.
        let answer = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==");
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{answer}");
        assert_eq!(response_status(answer.as_bytes()), Some(101));
        assert_eq!(response_status(b"garbage"), None);
    }

    #[test]
    fn openings_are_read_as_they_are() {
        let ok = b"GET /session HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let key = "dGhlIHNhbXBsZSBub25jZQ==".to_string();
        assert_eq!(parse_upgrade(ok), Ok(Upgrade { path: "/session".into(), key: key.clone() }));
        assert_eq!(parse_upgrade(session_request(&key).as_bytes()), Ok(Upgrade { path: "/session".into(), key }));
        // A bare LF ends the head for other parsers: what follows it would reach them as frames.
        let smuggled = b"GET /session HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\n\x02\xC2\x80AAA\r\n\r\n";
        assert!(parse_upgrade(smuggled).unwrap_err().contains("bare line feed"));
        let short_key = b"GET /session HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc==\r\n\r\n";
        assert!(parse_upgrade(short_key).is_err());
        assert!(parse_upgrade(b"GET /data HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err().contains("\"/data\""));
        assert!(parse_upgrade(b"\x16\x03\x01 tls").is_err());
        assert!(parse_upgrade(b"POST /session HTTP/1.1\r\n\r\n").is_err());
    }

    /// A pair of connected sockets on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn heads_and_frames_are_capped_and_timed() {
        let (mut a, b) = pair();
        // A head with a frame right behind it: the frame's bytes stay pending.
        a.write_all(b"GET / HTTP/1.1\r\n\r\n\x82\xFF\x00\x00\x00\x00\x40\x00\x00\x00\x01\x02\x03\x04").unwrap();
        let mut r = Reader { stream: &b, pending: Vec::new(), deadline: Some(Instant::now() + Duration::from_secs(5)) };
        assert_eq!(r.head().unwrap(), b"GET / HTTP/1.1\r\n\r\n");
        let h = r.frame_header().unwrap();
        assert_eq!((h.fin, h.opcode, h.masked, h.len, h.mask), (true, OP_BINARY, true, 1 << 30, [1, 2, 3, 4]));
        assert_eq!(h.raw.len(), 14);
        // Its 1 GiB never comes: the deadline ends the wait, nothing was allocated for it.
        r.deadline = Some(Instant::now() + Duration::from_millis(100));
        assert!(matches!(r.stream_payload(h.len, &mut io::sink(), &mut [0u8; 16], || ()), Err(ReadError::Silent)));
        // A head that never ends is cut at the cap.
        a.write_all(&vec![b'a'; HEAD_MAX + 2048]).unwrap();
        r.deadline = Some(Instant::now() + Duration::from_secs(5));
        assert!(matches!(r.head(), Err(ReadError::TooLarge(_))));
        drop(a);
        let mut buf = [0u8; 1 << 16];
        while r.read_some(&mut buf).is_ok() {}
        assert!(matches!(r.read_some(&mut buf), Err(ReadError::Closed)));
    }

    #[test]
    fn masking_twice_is_the_identity() {
        let mut p = b"realfill".to_vec();
        unmask(&mut p, [9, 8, 7, 6]);
        assert_ne!(&p, b"realfill");
        unmask(&mut p, [9, 8, 7, 6]);
        assert_eq!(&p, b"realfill");
        let ping = client_ping(7);
        assert_eq!((ping[0], ping[1]), (0x80 | OP_PING, 0x84), "a final, masked ping of 4 bytes");
        let mut id = [ping[6], ping[7], ping[8], ping[9]];
        unmask(&mut id, [ping[2], ping[3], ping[4], ping[5]]);
        assert_eq!(u32::from_be_bytes(id), 7);
    }
}
