//! The GPU server over loopback: `realfill serve` on this machine's CPU and clients on
//! `--backend remote=…`. Results must equal the local backend's; refusals and a server that
//! stops must end the job with one clear message and nothing written.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Server, bin, scene, scene_cmd};

fn tmp(name: &str) -> PathBuf {
    common::tmp("remote", name)
}

/// `realfill fill` on the scene in `dir` with tiny model settings and its own cache.
fn fill(dir: &Path, backend: &[&str], extra: &[&str], out: &Path) -> Output {
    fill_with(dir, backend, extra, out, &[])
}

fn fill_with(dir: &Path, backend: &[&str], extra: &[&str], out: &Path, env: &[(&str, &str)]) -> Output {
    scene_cmd(dir, "fill")
        .envs(env.iter().copied())
        .env_remove("REALFILL_REMOTE_TOKEN")
        .arg("--out")
        .arg(out)
        .args(["--size", "80", "--learn-steps", "4", "--batch", "2", "--crop", "16", "--no-cache", "--quiet"])
        .args(backend)
        .args(extra)
        .output()
        .unwrap()
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let f = dir.join("token");
    std::fs::write(&f, format!("{token}\n")).unwrap();
    f
}

/// Largest and mean absolute difference of two 8-bit images, in levels.
fn difference(a: &Path, b: &Path) -> (u8, f64) {
    let (a, b) = (image::open(a).unwrap().to_rgb8(), image::open(b).unwrap().to_rgb8());
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    (*d.iter().max().unwrap(), d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Each engine through the server equals the same engine here (same seed). The server runs
/// clients' work as burn operations on its CPU, so the local runs compared are on burn's CPU
/// backend too (`REALFILL_BURN_CPU`, `REALFILL_TENSOR_ATTENTION`: realfill's own CPU kernels
/// order their sums differently, which a few learning steps amplify to a few levels).
#[test]
fn every_engine_through_a_loopback_server_matches_the_local_backend() {
    let dir = tmp("match");
    scene(&dir);
    let tf = token_file(&dir, "loopback-secret");
    let server = Server::start(&tf);
    assert!(server.banner.contains("device: CPU"), "{}", server.banner);
    assert!(server.banner.contains("token: the one in"), "{}", server.banner);
    let remote =
        ["--backend".to_string(), format!("remote={}", server.url), "--token-file".into(), tf.display().to_string()];
    let remote: Vec<&str> = remote.iter().map(String::as_str).collect();
    let sd = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd-tiny");
    let cases: [(&str, Vec<&str>); 3] = [
        ("patch", vec!["--engine", "patch"]),
        ("scene", vec!["--engine", "scene", "--steps", "3"]),
        ("sd", vec!["--engine", "sd", "--model", sd, "--steps", "3"]),
    ];
    for (name, extra) in cases {
        let (here, there) = (dir.join(format!("{name}-local.png")), dir.join(format!("{name}-remote.png")));
        let o = fill_with(
            &dir,
            &["--backend", "cpu"],
            &extra,
            &here,
            &[("REALFILL_BURN_CPU", "1"), ("REALFILL_SD_BURN_CPU", "1"), ("REALFILL_TENSOR_ATTENTION", "1")],
        );
        assert!(o.status.success(), "{name} local: {}", stderr(&o));
        let o = fill(&dir, &remote, &extra, &there);
        assert!(o.status.success(), "{name} remote: {}", stderr(&o));
        let (max, mean) = difference(&here, &there);
        eprintln!("{name}: remote vs local: max {max} levels, mean {mean:.4}");
        assert!(max <= 1 && mean <= 0.01, "{name}: remote differs from local: max {max}, mean {mean}");
    }
    // Stable Diffusion's LoRA learning (two steps of two examples): the adapters learned through
    // the server are the local ones, byte for byte — the local ones on burn's CPU backend, as
    // the server computes them (realfill's own kernels encode the VAE's latents within 1e-6 of
    // burn's, not bit for bit: `sd::cpu_forward`'s tests).
    let mut lora = Vec::new();
    for (name, backend) in [("local", vec!["--backend", "cpu"]), ("remote", remote.clone())] {
        let cache = dir.join(format!("lora-{name}"));
        let o = scene_cmd(&dir, "learn")
            .env("REALFILL_CACHE", &cache)
            .env("REALFILL_SD_BURN_CPU", "1")
            .args(["--engine", "sd", "--model", sd, "--lora-steps", "2", "--lora-batch", "2", "--quiet"])
            .args(&backend)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name} learn: {}", stderr(&o));
        let file = std::fs::read_dir(cache.join("sd-lora")).unwrap().next().unwrap().unwrap().path();
        lora.push(std::fs::read(file).unwrap());
    }
    assert!(lora[0] == lora[1], "the LoRA learned through the server is the local one");
    let log = server.stop();
    assert!(log.contains("connected"), "the server logs its clients: {log}");
}

#[test]
fn a_wrong_or_missing_token_is_refused_on_both_sides() {
    let dir = tmp("token");
    scene(&dir);
    let server = Server::start(&token_file(&dir, "the-right-one"));
    let url = format!("remote={}", server.url);
    let wrong = token_file(&dir, "not-it");
    let out = dir.join("out.png");
    let o = fill(&dir, &["--backend", &url, "--token-file", wrong.to_str().unwrap()], &[], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the server refused the token"), "{}", stderr(&o));
    let o = fill(&dir, &["--backend", &url], &[], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no token: give the token"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing is written when the server refuses");
    let log = server.stop();
    assert!(log.contains("presented a wrong token"), "{log}");
}

#[test]
fn an_unreachable_server_stops_the_command_at_once() {
    let dir = tmp("unreachable");
    scene(&dir);
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = dir.join("out.png");
    let t = Instant::now();
    let tf = token_file(&dir, "x");
    let o2 = fill(
        &dir,
        &["--backend", &format!("remote=ws://127.0.0.1:{port}"), "--token-file", tf.to_str().unwrap()],
        &[],
        &out,
    );
    assert!(!o2.status.success());
    let e = stderr(&o2);
    assert!(e.contains(&format!("ws://127.0.0.1:{port}: no GPU server answers there")), "{e}");
    assert_eq!(e.lines().filter(|l| l.starts_with("error")).count(), 1, "one message: {e}");
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(!out.exists());
}

/// `fill` of the scene in `dir` with the scene model learning (for as long as it is let) on
/// `server`; its stderr piped.
fn learning_through(dir: &Path, server: &Server, tf: &Path, out: &Path, env: &[(&str, &str)]) -> std::process::Child {
    scene_cmd(dir, "fill")
        .arg("--out")
        .arg(out)
        .args(["--engine", "scene", "--size", "80", "--learn-steps", "100000", "--batch", "2", "--crop", "16"])
        .args(["--no-cache", "--backend", &format!("remote={}", server.url), "--token-file", tf.to_str().unwrap()])
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// The server stops while the scene model learns through it: the job ends with a message
/// naming the lost connection, within seconds, and writes nothing.
#[test]
fn a_server_stopped_mid_job_fails_the_job_with_a_message() {
    let dir = tmp("stopped");
    scene(&dir);
    let tf = token_file(&dir, "mid-job");
    let server = Server::start(&tf);
    let out = dir.join("out.png");
    let mut client = learning_through(&dir, &server, &tf, &out, &[]);
    // Let learning get under way (its progress lines come every 10 %; wait on time instead).
    std::thread::sleep(Duration::from_secs(8));
    assert!(client.try_wait().unwrap().is_none(), "the job was still running");
    let stopped = Instant::now();
    server.stop();
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        assert!(stopped.elapsed() < Duration::from_secs(90), "the client did not notice the server stopped");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut e = String::new();
    client.stderr.take().unwrap().read_to_string(&mut e).unwrap();
    eprintln!("{e}");
    assert!(!status.success());
    assert!(e.contains("the connection to the GPU server at ws://127.0.0.1:"), "{e}");
    assert!(e.contains("was lost"), "{e}");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn a_server_open_to_the_network_needs_to_be_asked_for() {
    let o = bin().args(["serve", "--listen", "0.0.0.0:0", "--backend", "cpu"]).output().unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--listen 0.0.0.0:0: other machines could reach this server"), "{e}");
    assert!(e.contains("--allow-network"), "{e}");
    let o = bin().args(["fill", "--demo", "--out", "/tmp/x.png", "--backend", "remote=gpu:7878"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ws://HOST:PORT"), "{}", stderr(&o));
}

/// `VmPeak` (address space) and `VmHWM` (resident) of a process, in MB.
fn memory_mb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    (field("VmPeak:"), field("VmHWM:"))
}

fn connect(url: &str) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(url.trim_start_matches("ws://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

const OPENING: &[u8] = b"GET /session HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Issue 32: what anyone who reaches the port can send before a token: frame headers declaring
/// 1 GiB, random bytes on burn's tensor route, connections that send nothing or half an opening.
/// None of it reserves memory by the size it declares or holds the server; every refusal is
/// logged; the real client fills through all of it.
#[test]
fn the_gate_holds_before_the_token_and_the_real_client_still_fills() {
    use std::io::Write;
    let dir = tmp("gate");
    scene(&dir);
    let tf = token_file(&dir, "gate");
    let server = Server::start(&tf);
    let before = memory_mb(server.pid());

    // Seven openings, each followed by a 14-byte header declaring a 1 GiB frame: each is
    // refused and closed by its header.
    let huge = [0x82u8, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4];
    for _ in 0..7 {
        let mut s = connect(&server.url);
        s.write_all(OPENING).unwrap();
        let mut answer = [0u8; 256];
        let n = s.read(&mut answer).unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&answer[..n]));
        s.write_all(&huge).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // ends: the server closed it
    }
    // The connections' threads take malloc arenas (64 MB of address space each, at most 8 per
    // core): far below the 7 GiB the headers declared.
    let after = memory_mb(server.pid());
    assert!(after.0 < before.0 + 2048, "address space {before:?} → {after:?} MB (7 GiB declared)");

    // burn's unauthenticated tensor route, with random bytes behind the opening.
    let mut s = connect(&server.url);
    let mut data = OPENING.to_vec();
    data.splice(4..12, b"/data".iter().copied());
    data.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    s.write_all(&data).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // Forty silent connections and five half openings, held while the real client fills.
    let mut held: Vec<_> = (0..40).map(|_| connect(&server.url)).collect();
    for _ in 0..5 {
        let mut s = connect(&server.url);
        s.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\n").unwrap();
        held.push(s);
    }
    let out = dir.join("out.png");
    let remote = format!("remote={}", server.url);
    let o = fill(&dir, &["--backend", &remote, "--token-file", tf.to_str().unwrap()], &[], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists());
    drop(held);
    let peak = memory_mb(server.pid());
    let log = server.stop();
    assert!(log.contains("declared 1073741824 bytes"), "{log}");
    assert!(log.contains("it asked for \"/data\""), "{log}");
    assert!(log.contains("were waiting to be admitted"), "{log}");
    assert!(log.contains("connected"), "{log}");
    assert!(!log.contains("panicked") && !log.contains("WARN"), "{log}");
    assert!(peak.1 < 1024, "resident peak {peak:?} MB");
}

/// A listener that accepts and then does `then` with each connection, on its own thread.
fn fake_server(then: fn(std::net::TcpStream)) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || then(c));
        }
    });
    url
}

/// Issue 32: the client does not wait for ever on a server that accepts and never answers,
/// or answers the opening and then nothing: each ends with one message saying so.
#[test]
fn a_server_that_never_answers_is_given_up_with_a_message() {
    let dir = tmp("silent");
    scene(&dir);
    let tf = token_file(&dir, "x");
    let mute = fake_server(|c| {
        std::thread::sleep(Duration::from_secs(60));
        drop(c)
    });
    let opens_only = fake_server(|c| {
        let mut c = c;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let key = text.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap_or("").trim().to_string();
        // Any accept key: the relay answers burn with the server's answer as it came.
        let _ = key;
        let _ = std::io::Write::write_all(
            &mut c,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        std::thread::sleep(Duration::from_secs(60));
    });
    for (url, says) in [(&mute, "did not answer it within 10 s"), (&opens_only, "")] {
        let t = Instant::now();
        let o = fill_with(
            &dir,
            &["--backend", &format!("remote={url}"), "--token-file", tf.to_str().unwrap()],
            &[],
            &dir.join("out.png"),
            &[("REALFILL_SERVER_SILENCE", "2")],
        );
        let e = stderr(&o);
        assert!(!o.status.success());
        assert!(e.contains(url.as_str()) && e.contains(says), "{e}");
        assert_eq!(e.lines().filter(|l| l.starts_with("error")).count(), 1, "one message: {e}");
        assert!(t.elapsed() < Duration::from_secs(40), "{:?}", t.elapsed());
    }
    assert!(!dir.join("out.png").exists());
}

/// Issue 32: a real server stopped (SIGSTOP, as a hung machine) during a job: the client gives
/// it up after the silence limit, with a message, though the server's socket stays open; and
/// it does not give up a server that is busy learning (it answers the watchdog's pings).
#[test]
fn a_stopped_server_is_reported_not_waited_on() {
    let dir = tmp("sigstop");
    scene(&dir);
    let tf = token_file(&dir, "stop");
    let server = Server::start(&tf);
    let out = dir.join("out.png");
    let mut client = learning_through(&dir, &server, &tf, &out, &[("REALFILL_SERVER_SILENCE", "3")]);
    // Learning for longer than the silence limit: the busy server must not be given up.
    std::thread::sleep(Duration::from_secs(9));
    assert!(client.try_wait().unwrap().is_none(), "the job was still running");
    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        if stopped.elapsed() > Duration::from_secs(60) {
            let _ = client.kill();
            panic!("the client kept waiting on the stopped server");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
    let mut e = String::new();
    client.stderr.take().unwrap().read_to_string(&mut e).unwrap();
    server.stop();
    assert!(!status.success());
    assert!(e.contains("the GPU server did not answer within 3 s") && e.contains("what you made is kept"), "{e}");
    assert!(!out.exists());
}
