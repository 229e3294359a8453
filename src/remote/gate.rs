//! The GPU server's gate: the only thing listening on `realfill serve`'s address. burn's
//! WebSocket server reads a frame of up to 1 GiB before its token check, serves an
//! unauthenticated tensor-transfer route, and keeps no deadline, so it listens on loopback
//! only and every connection reaches it through here, checked first:
//! - the opening must be a WebSocket request for `/session` (≤ 8 KiB, plain CRLF lines: what
//!   the gate reads is what any parser reads), and the client's first message (≤ 16 KiB)
//!   must arrive within [`ADMIT_WITHIN`] of connecting; burn gets an opening the gate writes;
//! - at most [`WAITING_MAX`] connections wait to be admitted; a new one pushes out the oldest
//!   (a real client is admitted within milliseconds; one that lingers is a probe);
//! - the first message's token is checked here; only an admitted client's bytes reach burn,
//!   and a refused one's greeting goes to burn alone so the client hears burn's own refusal.
//!
//! Nothing is allocated by a size a client declares. Every refusal is logged with its reason
//! (at most [`REFUSALS_PER_SECOND`] lines a second; the rest are counted).

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::websocket::{self, OP_BINARY, ReadError, Reader};

/// How long a client has from connecting to presenting its token.
pub const ADMIT_WITHIN: Duration = Duration::from_secs(10);
/// How many connections may wait to be admitted at once.
pub const WAITING_MAX: usize = 16;
/// The largest first message (burn's session greeting: a few dozen bytes and the token).
pub const GREETING_MAX: u64 = 16 * 1024;
/// How long burn has to answer a refused greeting (it answers at once).
const REFUSAL_WITHIN: Duration = Duration::from_secs(2);

/// What the gate checks against and where it sends admitted clients.
pub struct Gate {
    /// SHA-256 of the token (compared as digests: the time taken says nothing about the token).
    pub token_digest: [u8; 32],
    /// burn's server, on loopback.
    pub inner: SocketAddr,
    pub log: fn(&str),
}

/// Refusal lines: at most this many a second; the rest are counted and the count logged.
const REFUSALS_PER_SECOND: u32 = 20;

/// The gate's log of refusals, rate-limited so that a flood neither fills the disk nor buries
/// the lines that matter under its own (a summary says how many were left out).
struct RefusalLog {
    log: fn(&str),
    state: Mutex<(Instant, u32, u64)>,
}

impl RefusalLog {
    fn say(&self, msg: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (since, lines, left_out) = &mut *st;
        if since.elapsed() >= Duration::from_secs(1) {
            if *left_out > 0 {
                (self.log)(&format!("… and {left_out} more refusals not logged one by one"));
            }
            *since = Instant::now();
            *lines = 0;
            *left_out = 0;
        }
        if *lines < REFUSALS_PER_SECOND {
            *lines += 1;
            (self.log)(msg);
        } else {
            *left_out += 1;
        }
    }
}

/// Connections waiting to be admitted: an id, when it connected, and a handle to close it.
#[derive(Default)]
struct Waiting {
    next: u64,
    list: Vec<(u64, Instant, TcpStream)>,
}

/// Accept on `listener` for ever, one thread per connection.
pub fn run(gate: Gate, listener: TcpListener) {
    let refusals = Arc::new(RefusalLog { log: gate.log, state: Mutex::new((Instant::now(), 0, 0)) });
    let gate = Arc::new(gate);
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let mut last_accept_error = None::<Instant>;
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors (or a transient error): say so at most every 10 s,
                // and do not spin.
                if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    (gate.log)(&format!("cannot accept a connection: {e}"));
                    last_accept_error = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = {
            let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
            if w.list.len() >= WAITING_MAX {
                let (_, since, oldest) = w.list.remove(0);
                let who = oldest.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "a client".into());
                refusals.say(&format!(
                    "dropped {who}: {WAITING_MAX} connections were waiting to be admitted and it had waited longest ({:.1} s)",
                    since.elapsed().as_secs_f32()
                ));
                let _ = oldest.shutdown(Shutdown::Both);
            }
            let Ok(handle) = stream.try_clone() else { continue };
            w.next += 1;
            let id = w.next;
            w.list.push((id, Instant::now(), handle));
            id
        };
        let (g, w, r) = (gate.clone(), waiting.clone(), refusals.clone());
        let spawned = std::thread::Builder::new().name("realfill-gate".into()).spawn(move || {
            let off_list = || w.lock().unwrap_or_else(|e| e.into_inner()).list.retain(|(i, _, _)| *i != id);
            let admitted = admit(&g, &r, &stream, peer, off_list);
            off_list();
            match admitted {
                Ok(Some(inner)) => serve_admitted(&g, stream, inner, peer),
                Ok(None) => {}
                Err(why) => r.say(&format!("refused {peer}: {why}")),
            }
        });
        if let Err(e) = spawned {
            refusals.say(&format!("refused {peer}: no thread for it ({e})"));
            waiting.lock().unwrap_or_else(|e| e.into_inner()).list.retain(|(i, _, _)| *i != id);
        }
    }
}

/// Read and check the opening and the greeting. Ok(Some(burn)) for an admitted client, with
/// its opening and greeting already passed on; Ok(None) for a refused token (burn has told
/// the client); Err(why) for anything else. `admitted` runs once the client is off the list.
fn admit(
    gate: &Gate,
    refusals: &RefusalLog,
    stream: &TcpStream,
    peer: SocketAddr,
    admitted: impl FnOnce(),
) -> Result<Option<TcpStream>, String> {
    let deadline = Instant::now() + ADMIT_WITHIN;
    let late = |what: &str, e: ReadError| match e {
        ReadError::Silent => format!("{what} did not arrive within {} s", ADMIT_WITHIN.as_secs()),
        ReadError::TooLarge(n) => format!("{what} was larger than allowed ({n} bytes or more)"),
        other => format!("{what}: {other}"),
    };
    let mut reader = Reader { stream, pending: Vec::new(), deadline: Some(deadline) };
    let head = reader.head().map_err(|e| late("its opening", e))?;
    let upgrade = match websocket::parse_upgrade(&head) {
        Ok(u) if u.path == "/session" => u,
        Ok(u) => {
            let _ = (&*stream).write_all(websocket::refusal("404 Not Found").as_bytes());
            return Err(format!("it asked for {:?}; this server has only realfill sessions", u.path));
        }
        Err(why) => {
            let _ = (&*stream).write_all(websocket::refusal("400 Bad Request").as_bytes());
            return Err(why);
        }
    };
    stream.set_write_timeout(Some(ADMIT_WITHIN)).map_err(|e| e.to_string())?;
    (&*stream).write_all(websocket::switching_protocols(&upgrade.key).as_bytes()).map_err(|e| e.to_string())?;
    let header = reader.frame_header().map_err(|e| late("its first message", e))?;
    if header.opcode != OP_BINARY || !header.fin || !header.masked {
        return Err("its first message was not a session greeting".into());
    }
    if header.len > GREETING_MAX {
        return Err(format!("its first message declared {} bytes; a greeting is at most {GREETING_MAX}", header.len));
    }
    let mut payload = vec![0u8; header.len as usize];
    reader.read_exact(&mut payload).map_err(|e| late("its first message", e))?;
    let mut greeting = payload.clone();
    websocket::unmask(&mut greeting, header.mask);
    let token = greeting_token(&greeting).ok_or("its first message was not a session greeting")?;
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&token).into();
    let authorized = digest == gate.token_digest;

    // burn gets an opening the gate writes (nothing the client put around its own reaches
    // burn) and the greeting as it came; burn answers it: admitted, or refused in the words
    // its client understands.
    let inner = TcpStream::connect_timeout(&gate.inner, ADMIT_WITHIN).map_err(|e| format!("burn's server: {e}"))?;
    inner.set_write_timeout(Some(ADMIT_WITHIN)).map_err(|e| e.to_string())?;
    (&inner)
        .write_all(websocket::session_request(&upgrade.key).as_bytes())
        .map_err(|e| format!("burn's server: {e}"))?;
    let mut from_burn = Reader { stream: &inner, pending: Vec::new(), deadline: Some(Instant::now() + ADMIT_WITHIN) };
    let answer = from_burn.head().map_err(|e| late("burn's server's answer", e))?;
    if websocket::response_status(&answer) != Some(101) {
        return Err("burn's server did not accept the opening".into());
    }
    (&inner).write_all(&header.raw).and_then(|()| (&inner).write_all(&payload)).map_err(|e| e.to_string())?;
    if !authorized {
        let why = if token.is_empty() { "no token" } else { "a wrong token" };
        refusals.say(&format!("refused {peer}: it presented {why}"));
        // burn's refusal goes back (it comes at once), nothing more from the client goes on,
        // and until then the connection still counts as waiting.
        let _ = inner.set_read_timeout(Some(REFUSAL_WITHIN));
        let _ = stream.set_write_timeout(Some(REFUSAL_WITHIN));
        let _ = std::io::copy(&mut &inner, &mut &*stream);
        let _ = stream.shutdown(Shutdown::Both);
        let _ = inner.shutdown(Shutdown::Both);
        return Ok(None);
    }
    admitted();
    // Whatever the client sent right behind its greeting, and burn behind its answer.
    if !reader.pending.is_empty() {
        (&inner).write_all(&reader.pending).map_err(|e| e.to_string())?;
    }
    if !from_burn.pending.is_empty() {
        (&*stream).write_all(&from_burn.pending).map_err(|e| e.to_string())?;
    }
    Ok(Some(inner))
}

/// An admitted client's bytes both ways until either side closes.
fn serve_admitted(gate: &Gate, client: TcpStream, inner: TcpStream, peer: SocketAddr) {
    (gate.log)(&format!("{peer} connected"));
    let since = Instant::now();
    for s in [&client, &inner] {
        let _ = s.set_read_timeout(None);
        let _ = s.set_write_timeout(None);
        let _ = s.set_nodelay(true);
    }
    keep_alive(&client);
    let (Ok(client2), Ok(inner2)) = (client.try_clone(), inner.try_clone()) else { return };
    let up = std::thread::Builder::new().name("realfill-gate-up".into()).spawn(move || {
        let _ = std::io::copy(&mut &client2, &mut &inner2);
        let _ = inner2.shutdown(Shutdown::Write);
    });
    if up.is_ok() {
        let _ = std::io::copy(&mut &inner, &mut &client);
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = inner.shutdown(Shutdown::Both);
    if let Ok(up) = up {
        let _ = up.join();
    }
    (gate.log)(&format!("{peer}'s session ended after {:.0} s", since.elapsed().as_secs_f32()));
}

/// A client that vanished (a crash, a dropped network, a sleeping laptop) is noticed within
/// about 30 s even while its session is idle, and one that stops taking what it is sent
/// within a minute (`TCP_USER_TIMEOUT`: keep-alive probes alone are answered by its kernel).
fn keep_alive(s: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(4);
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_tcp_keepalive(&keepalive);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(60)));
}

/// burn's session greeting, as its client writes it (MessagePack of `[Init(SessionInit)]`,
/// burn-remote 0.22's `shared/task.rs`; a test sends a real client through the gate, and
/// `remote::tests::burn_version_is_the_locked_one` pins the version).
#[derive(serde::Deserialize)]
enum Message {
    #[allow(dead_code)]
    Task(serde::de::IgnoredAny),
    Init(Init),
    #[allow(dead_code)]
    Close(serde::de::IgnoredAny),
}

#[derive(serde::Deserialize)]
struct Init {
    #[allow(dead_code)]
    version: u16,
    #[allow(dead_code)]
    session_id: serde::de::IgnoredAny,
    #[allow(dead_code)]
    device_index: u32,
    authorization: serde_bytes::ByteBuf,
}

/// The token in a session greeting; None if it is not one.
fn greeting_token(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut messages: Vec<Message> = rmp_serde::from_slice(bytes).ok()?;
    match (messages.pop(), messages.is_empty()) {
        (Some(Message::Init(init)), true) => Some(init.authorization.into_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_are_read_and_anything_else_is_not_one() {
        // burn's greeting as its client encodes it: [Init { version, session_id { id }, device_index, authorization }].
        #[derive(serde::Serialize)]
        enum Out {
            #[allow(dead_code)]
            Task(u8),
            Init {
                version: u16,
                session_id: (u64,),
                device_index: u32,
                authorization: serde_bytes::ByteBuf,
            },
        }
        let init = Out::Init {
            version: 2,
            session_id: (7,),
            device_index: 0,
            authorization: serde_bytes::ByteBuf::from(b"secret".to_vec()),
        };
        let bytes = rmp_serde::to_vec(&vec![init]).unwrap();
        assert_eq!(greeting_token(&bytes), Some(b"secret".to_vec()));
        assert_eq!(greeting_token(&rmp_serde::to_vec(&vec![Out::Task(1)]).unwrap()), None);
        assert_eq!(greeting_token(b"\xff\x00 random bytes"), None);
        assert_eq!(greeting_token(&[]), None);
    }
}
