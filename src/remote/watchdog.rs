//! The client's watchdog: burn's WebSocket client has no connect, read or reply deadline, so
//! a server that accepts TCP and never answers, or stops (SIGSTOP, a hung machine) with a
//! session open, would keep realfill waiting for ever. burn connects to a relay on loopback
//! instead, and the relay carries its bytes to the server while watching them:
//! - the TCP connection must be made within [`CONNECT_WITHIN`], and the server must answer the
//!   WebSocket opening within it too;
//! - while the session is open the relay pings the server whenever it has been quiet for 5 s
//!   (or a third of the silence limit); a server that sends nothing — no answer, no pong, no
//!   byte of a frame in progress — for the silence limit (30 s, `REALFILL_SERVER_SILENCE`) is
//!   given up;
//! - a frame from the server larger than burn's own limit (1 GiB) is refused by its header.
//!
//! Giving up closes burn's side, so the job in progress fails at once, and the reason is kept
//! for the message ([`failure`]).

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::websocket::{self, OP_PONG, ReadError, Reader};

/// Connecting and the opening's answer, each.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Quiet this long (or a third of the silence limit, if shorter), the relay asks the server
/// for a sign of life.
const PING_AFTER: Duration = Duration::from_secs(5);
/// burn's own limit for one message.
const FRAME_MAX: u64 = 1 << 30;

/// Why each server (by address) was given up, newest last.
static FAILURES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Why the relay gave up the server at `url`, if it did.
pub fn failure(url: &str) -> Option<String> {
    let list = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    list.iter().rev().find(|(u, _)| u == url).map(|(_, why)| why.clone())
}

/// Forget earlier reasons for `url` (a new attempt to connect).
pub fn forget(url: &str) {
    FAILURES.lock().unwrap_or_else(|e| e.into_inner()).retain(|(u, _)| u != url);
}

fn give_up(url: &str, why: String) {
    FAILURES.lock().unwrap_or_else(|e| e.into_inner()).push((url.to_string(), why));
}

/// Start a relay to the server at `url` (`ws://HOST:PORT`); returns the loopback address
/// burn's client should dial instead.
pub fn start(url: &str, silence: Duration) -> Result<SocketAddr, String> {
    let hostport = url.trim_start_matches("ws://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("{url}: no local relay: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let url = url.to_string();
    std::thread::Builder::new()
        .name("realfill-watchdog".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(local) = conn else { continue };
                let (url, hostport) = (url.clone(), hostport.clone());
                std::thread::spawn(move || {
                    if let Err(why) = relay(&url, &hostport, &local, silence) {
                        give_up(&url, why);
                    }
                    let _ = local.shutdown(Shutdown::Both);
                });
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}

/// One connection of burn's client, relayed to the server until either side ends it. Err is
/// why the server was given up (an orderly end is Ok).
fn relay(url: &str, hostport: &str, local: &TcpStream, silence: Duration) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: no GPU server can be found there ({e}); check the address"))?
        .collect();
    let mut last = String::new();
    let mut remote = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_WITHIN) {
            Ok(s) => {
                remote = Some(s);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = format!(
                    "{url}: no GPU server answered within {} s; check the address and the SSH tunnel",
                    CONNECT_WITHIN.as_secs()
                )
            }
            Err(e) => {
                last = format!(
                    "{url}: no GPU server answers there ({e}); start `realfill serve` on the GPU machine, and check the \
                     address and the SSH tunnel"
                )
            }
        }
    }
    let remote = remote.ok_or(last)?;
    let _ = remote.set_nodelay(true);
    let _ = local.set_nodelay(true);

    // The opening: burn's request out, the server's answer back, by the deadline.
    let mut from_local = Reader { stream: local, pending: Vec::new(), deadline: Some(Instant::now() + CONNECT_WITHIN) };
    let request = from_local.head().map_err(|e| format!("burn's client: {e}"))?;
    remote.set_write_timeout(Some(CONNECT_WITHIN)).map_err(|e| e.to_string())?;
    (&remote).write_all(&request).map_err(|e| format!("{url}: the GPU server: {e}"))?;
    let mut from_remote =
        Reader { stream: &remote, pending: Vec::new(), deadline: Some(Instant::now() + CONNECT_WITHIN) };
    let answer = from_remote.head().map_err(|e| match e {
        ReadError::Silent => format!(
            "{url}: something accepted the connection but did not answer it within {} s: is it `realfill serve`?",
            CONNECT_WITHIN.as_secs()
        ),
        other => format!("{url}: the GPU server did not answer the connection ({other})"),
    })?;
    (&*local).write_all(&answer).map_err(|e| e.to_string())?;
    if websocket::response_status(&answer) != Some(101) {
        return Ok(()); // burn's client reads the refusal itself.
    }

    let heard = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let now = move || start.elapsed().as_millis() as u64;
    let done = Arc::new(AtomicBool::new(false));
    // Set when a write to the server made no progress for the silence limit.
    let stalled = Arc::new(AtomicBool::new(false));
    // burn's client has sent its greeting (no ping may come before it: the server's gate
    // takes the first message for the greeting); a ping is waiting for its pong.
    let started = Arc::new(AtomicBool::new(false));
    let ping_out = Arc::new(AtomicBool::new(false));
    let ping_id = Arc::new(AtomicU32::new(0));
    let writer = Arc::new(Mutex::new(remote.try_clone().map_err(|e| e.to_string())?));
    // A write that makes no progress for the silence limit means the server stopped reading.
    remote.set_write_timeout(Some(silence)).map_err(|e| e.to_string())?;

    // Up: burn's frames to the server, whole (a ping goes only between frames).
    let up = {
        let local = local.try_clone().map_err(|e| e.to_string())?;
        let (writer, heard, done, stalled) = (writer.clone(), heard.clone(), done.clone(), stalled.clone());
        let started = started.clone();
        let pending = std::mem::take(&mut from_local.pending);
        std::thread::spawn(move || {
            let mut r = Reader { stream: &local, pending, deadline: None };
            let mut chunk = vec![0u8; websocket::CHUNK];
            let _ = local.set_read_timeout(None);
            while let Ok(h) = r.frame_header() {
                let w = writer.lock().unwrap_or_else(|e| e.into_inner());
                let mut out = &*w;
                let sent = out.write_all(&h.raw).map_err(|e| e.kind()).and_then(|()| {
                    r.stream_payload(h.len, &mut out, &mut chunk, || heard.store(now(), Ordering::Relaxed)).map_err(
                        |e| match e {
                            // burn's side is read without a deadline: only a write times out.
                            ReadError::Silent => std::io::ErrorKind::TimedOut,
                            ReadError::Io(e) => e.kind(),
                            _ => std::io::ErrorKind::Other,
                        },
                    )
                });
                if let Err(kind) = sent {
                    if matches!(kind, std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                        stalled.store(true, Ordering::Relaxed);
                    }
                    break;
                }
                started.store(true, Ordering::Relaxed);
            }
            done.store(true, Ordering::Relaxed);
            if let Ok(w) = writer.lock() {
                let _ = w.shutdown(Shutdown::Write);
            }
        })
    };

    // Pings when the server is quiet.
    let ping_after = PING_AFTER.min(silence / 3);
    let pinger = {
        let (writer, heard, done) = (writer.clone(), heard.clone(), done.clone());
        let (started, ping_out, ping_id) = (started.clone(), ping_out.clone(), ping_id.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let quiet = now().saturating_sub(heard.load(Ordering::Relaxed));
                if started.load(Ordering::Relaxed)
                    && quiet >= ping_after.as_millis() as u64
                    && let Ok(w) = writer.try_lock()
                {
                    let id = ping_id.fetch_add(1, Ordering::Relaxed) + 1;
                    ping_out.store(true, Ordering::Relaxed);
                    let _ = (&*w).write_all(&websocket::client_ping(id));
                    drop(w);
                    std::thread::sleep(ping_after);
                }
            }
        })
    };

    // Down: the server's frames to burn, pongs kept back; silence for too long ends it.
    from_remote.deadline = None;
    remote.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
    heard.store(now(), Ordering::Relaxed);
    let mut buf = vec![0u8; websocket::CHUNK];
    let result = (|| -> Result<(), String> {
        let quiet_too_long =
            |heard: &AtomicU64| now().saturating_sub(heard.load(Ordering::Relaxed)) > silence.as_millis() as u64;
        let silent = || {
            format!(
                "{url}: the GPU server did not answer within {} s (stopped, overloaded or cut off)",
                silence.as_secs()
            )
        };
        loop {
            let header = loop {
                match from_remote.frame_header() {
                    Ok(h) => break h,
                    Err(ReadError::Silent) if quiet_too_long(&heard) || stalled.load(Ordering::Relaxed) => {
                        return Err(silent());
                    }
                    Err(ReadError::Silent) if done.load(Ordering::Relaxed) => return Ok(()),
                    Err(ReadError::Silent) => continue,
                    Err(ReadError::Closed) => return Ok(()),
                    Err(e) => return Err(format!("{url}: the GPU server sent something unreadable ({e})")),
                }
            };
            let pong = header.opcode == OP_PONG;
            // A pong is a sign of life only as the answer to the last ping, its id echoed
            // (unsolicited ones would keep a hung server looking alive); any other frame is one.
            if pong && header.len > 125 {
                return Err(format!(
                    "{url}: the GPU server sent something unreadable (a pong of {} bytes)",
                    header.len
                ));
            }
            if !pong {
                heard.store(now(), Ordering::Relaxed);
            }
            let mut echoed = Vec::new();
            if header.len > FRAME_MAX {
                return Err(format!(
                    "{url}: the GPU server announced a message of {} bytes, more than burn's limit of {FRAME_MAX}",
                    header.len
                ));
            }
            if !pong {
                (&*local).write_all(&header.raw).map_err(|_| String::new())?;
            }
            // The payload: each kibibyte a sign of life (a byte now and then is not: a server
            // could drip one for ever); a pause longer than the limit ends it.
            let mut left = header.len;
            let mut since_mark = 0usize;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                match from_remote.read_some(&mut buf[..want]) {
                    Ok(n) => {
                        if pong {
                            echoed.extend_from_slice(&buf[..n]);
                        } else {
                            (&*local).write_all(&buf[..n]).map_err(|_| String::new())?;
                        }
                        left -= n as u64;
                        since_mark += n;
                        if !pong && (since_mark >= 1024 || left == 0) {
                            heard.store(now(), Ordering::Relaxed);
                            since_mark = 0;
                        }
                    }
                    Err(ReadError::Silent) if !quiet_too_long(&heard) && !stalled.load(Ordering::Relaxed) => continue,
                    Err(ReadError::Silent) => return Err(silent()),
                    Err(_) => return Ok(()),
                }
            }
            if pong
                && echoed == ping_id.load(Ordering::Relaxed).to_be_bytes()
                && ping_out.swap(false, Ordering::Relaxed)
            {
                heard.store(now(), Ordering::Relaxed);
            }
        }
    })();
    // The reason is kept before burn's side closes: the job's error is built the moment it does.
    match result {
        Err(why) if !why.is_empty() => give_up(url, why),
        _ => {} // an orderly end, or burn's client went away first
    }
    done.store(true, Ordering::Relaxed);
    let _ = remote.shutdown(Shutdown::Both);
    let _ = local.shutdown(Shutdown::Both);
    let _ = up.join();
    let _ = pinger.join();
    Ok(())
}
