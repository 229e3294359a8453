//! Computing on another machine: realfill's side of burn's remote backend. A GPU machine runs
//! `realfill serve` (a burn remote server behind a token); a laptop names it with
//! `--backend remote=ws://HOST:PORT` or the app's "GPU server", and every burn computation
//! (scene-model learning and sampling, the patch engine's tensor path, Stable Diffusion and its
//! LoRA learning) runs there; the UI, alignment, compositing and previews stay local.
//!
//! burn brings the protocol, the transport and the token check. realfill adds what burn's
//! handshake does not say: which realfill version the server runs and whether its device is a
//! GPU (a custom operation, `HELLO`, answered by the server), so a client refuses a server of
//! another version with both versions named, and picks the float type the server's device
//! wants (f16 on a GPU, f32 on a CPU).
//!
//! And what burn's WebSocket transport lacks against a hostile network and a stopped server:
//! the server listens through a gate that checks openings, sizes and the token before burn
//! sees a byte (`gate`); the client reaches the server through a watchdog relay with connect
//! and silence deadlines (`watchdog`); both read WebSocket through `websocket`.

mod gate;
mod watchdog;
mod websocket;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use burn::backend::ops::FloatTensorOps;
use burn::prelude::*;
use burn::remote::{ConnectError, CustomOpClient, RemoteHost};
use burn::server::{AuthorizationRequest, RemoteServer, WebSocketTransport};
use burn_ir::{BackendIr, CustomOpIr, HandleContainer, ScalarIr, TensorIr};

/// The environment variable a client reads its token from when no `--token-file` is given.
pub const TOKEN_ENV: &str = "REALFILL_REMOTE_TOKEN";
/// realfill's version, as clients and servers compare it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// burn's version (Cargo.lock; a test keeps them equal): the tensor protocol both ends speak.
pub const BURN_VERSION: &str = "0.22.1";
/// The custom operation through which a client asks the server who it is.
const HELLO: &str = "realfill.hello";
/// Bytes of the hello answer (UTF-8 text, zero-padded, one byte per f32).
const HELLO_LEN: usize = 512;

/// A GPU server as a client reaches it. The token never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Server {
    /// `ws://HOST:PORT`.
    pub url: String,
    pub token: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("url", &self.url).field("token", &"…").finish()
    }
}

/// What the server says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub realfill: String,
    pub burn: String,
    /// Whether the server computes on a GPU (f16 there, f32 on a CPU).
    pub gpu: bool,
    /// The server's device, as `realfill serve` printed it.
    pub description: String,
}

impl ServerInfo {
    pub fn here(gpu: bool, description: &str) -> ServerInfo {
        ServerInfo { realfill: VERSION.into(), burn: BURN_VERSION.into(), gpu, description: description.into() }
    }

    fn encode(&self) -> Vec<f32> {
        let text = format!("{}\n{}\n{}\n{}", self.realfill, self.burn, u8::from(self.gpu), self.description);
        let mut bytes: Vec<f32> = text.bytes().take(HELLO_LEN).map(f32::from).collect();
        bytes.resize(HELLO_LEN, 0.0);
        bytes
    }

    fn decode(values: &[f32]) -> Option<ServerInfo> {
        let bytes: Vec<u8> = values.iter().take_while(|&&v| v != 0.0).map(|&v| v as u8).collect();
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(4, '\n');
        Some(ServerInfo {
            realfill: parts.next()?.into(),
            burn: parts.next()?.into(),
            gpu: parts.next()? == "1",
            description: parts.next()?.into(),
        })
    }
}

/// `ws://HOST:PORT` as given after `remote=`, checked for the parts a connection needs.
pub fn parse_url(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("ws://").ok_or_else(|| {
        if s.starts_with("wss://") || s.starts_with("http") {
            format!("{s}: realfill's GPU server speaks ws:// (reach a remote one through an SSH tunnel, README \"GPU server\")")
        } else {
            format!("{s}: a GPU server's address is ws://HOST:PORT, as `realfill serve` prints it")
        }
    })?;
    let hostport = rest.trim_end_matches('/');
    let port = hostport.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if !host.is_empty() && p != 0 && !hostport.contains('/') => Ok(format!("ws://{hostport}")),
        _ => Err(format!("{s}: a GPU server's address is ws://HOST:PORT, as `realfill serve` prints it")),
    }
}

/// Devices connected in this process, with what their servers said (for `server_of`).
static CONNECTED: Mutex<Vec<(Device, ServerInfo)>> = Mutex::new(Vec::new());

/// What the server behind `device` said of itself; None for a local device.
pub fn server_of(device: &Device) -> Option<ServerInfo> {
    let inner = device.clone().inner();
    let list = CONNECTED.lock().unwrap_or_else(|e| e.into_inner());
    list.iter().find(|(d, _)| *d == inner).map(|(_, i)| i.clone())
}

/// Servers whose connection was lost in this process (`lost`).
static LOST: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The connection to `url` was lost. burn keeps one session per address and token for the
/// life of the process and does not reopen it, so `connect` refuses that address from now on
/// with a message saying so, rather than handing back the dead session.
pub fn lost(url: &str) {
    LOST.lock().unwrap_or_else(|e| e.into_inner()).push(url.to_string());
}

/// Connect to `server`, check that it runs this realfill and burn, and return its device.
/// Every error is one sentence naming the address.
pub fn connect(server: &Server) -> Result<(Device, ServerInfo), String> {
    let url = &server.url;
    if LOST.lock().unwrap_or_else(|e| e.into_inner()).contains(url) {
        return Err(format!(
            "{url}: the connection to this server was lost earlier, and burn cannot reopen it within one run: \
             restart realfill to connect again (or use this computer)"
        ));
    }
    if server.token.is_empty() {
        return Err(format!(
            "{url}: no token: give the token `realfill serve` printed with --token-file FILE or {TOKEN_ENV}"
        ));
    }
    watchdog::forget(url);
    let relay = relay_to(url)?;
    let host = RemoteHost::websocket(&format!("ws://{relay}")).with_credential(server.token.as_str());
    let device = Device::remote_options(&host)
        .init()
        .map_err(|e| watchdog::failure(url).unwrap_or_else(|| connect_error(url, e)))?;
    let info = hello(&device).map_err(|e| {
        lost(url);
        match watchdog::failure(url) {
            Some(why) => why,
            None => format!(
                "{url}: the server did not answer realfill's greeting ({e}); is it `realfill serve` of realfill {VERSION}?"
            ),
        }
    })?;
    same_versions(url, &info)?;
    CONNECTED.lock().unwrap_or_else(|e| e.into_inner()).push((device.clone(), info.clone()));
    Ok((device, info))
}

/// Relays to servers started in this process, by address: burn keeps one session per address
/// it dials, so one server keeps one relay.
static RELAYS: Mutex<Vec<(String, SocketAddr)>> = Mutex::new(Vec::new());

/// The loopback address of the watchdog relay to `url`, started on first use.
fn relay_to(url: &str) -> Result<SocketAddr, String> {
    let mut relays = RELAYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, a)) = relays.iter().find(|(u, _)| u == url) {
        return Ok(*a);
    }
    let a = watchdog::start(url, silence_limit())?;
    relays.push((url.to_string(), a));
    Ok(a)
}

/// How long a server may send nothing (not even a pong) before the client gives up on it.
fn silence_limit() -> Duration {
    Duration::from_secs(crate::switches::get().server_silence_s.unwrap_or(30))
}

/// What a job that failed on the GPU server at `url` says when the server no longer answers.
pub fn lost_message(url: &str) -> String {
    let kept = "what you made is kept, and the next job can run on this computer";
    match watchdog::failure(url) {
        Some(why) => format!("{why}; the job stopped: {kept}"),
        None => format!("the connection to the GPU server at {url} was lost during the job; {kept}"),
    }
}

/// A server of another realfill (or burn) is refused, with both versions named.
fn same_versions(url: &str, info: &ServerInfo) -> Result<(), String> {
    if info.realfill != VERSION || info.burn != BURN_VERSION {
        return Err(format!(
            "{url}: the server runs realfill {} (burn {}), this is realfill {VERSION} (burn {BURN_VERSION}): \
             run the same version on both machines",
            info.realfill, info.burn
        ));
    }
    Ok(())
}

fn connect_error(url: &str, e: ConnectError) -> String {
    match e {
        ConnectError::Unauthorized => format!(
            "{url}: the server refused the token: use the one `realfill serve` printed (--token-file FILE or {TOKEN_ENV})"
        ),
        ConnectError::Unreachable { reason } => format!(
            "{url}: no GPU server answers there ({reason}); start `realfill serve` on the GPU machine, and check the \
             address and the SSH tunnel"
        ),
        ConnectError::IncompatibleProtocol { client_version, server_version } => format!(
            "{url}: the server's burn speaks remote protocol {server_version}, this realfill's (burn {BURN_VERSION}) \
             speaks {client_version}: run the same realfill version on both machines"
        ),
        other => format!("{url}: cannot connect: {other}"),
    }
}

/// Ask the server behind `device` who it is (our custom operation; the client's version
/// travels with it so the server can log a mismatch).
fn hello(device: &Device) -> Result<ServerInfo, String> {
    let dispatch = device.clone().inner();
    let burn::backend::DispatchDevice::Remote(remote) = dispatch.as_dispatch() else {
        return Err("not a remote device".into());
    };
    let client = CustomOpClient::new(remote);
    let out =
        TensorIr::uninit(client.create_empty_handle(), burn::tensor::Shape::new([HELLO_LEN]), burn::tensor::DType::F32);
    let version: Vec<ScalarIr> = version_numbers(VERSION).into_iter().map(ScalarIr::UInt).collect();
    let tensor = client.register(CustomOpIr::with_scalars(HELLO, &[], &[out], version)).remove(0);
    let data = block_on(<burn::backend::Remote as FloatTensorOps<burn::backend::Remote>>::float_into_data(tensor))
        .map_err(|e| format!("{e:?}"))?;
    let values: Vec<f32> = data.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    ServerInfo::decode(&values).ok_or_else(|| "an answer realfill cannot read".into())
}

/// "1.22.3" → [1, 22, 3] (missing parts 0).
fn version_numbers(v: &str) -> [u64; 3] {
    let mut n = [0u64; 3];
    for (slot, part) in n.iter_mut().zip(v.split('.')) {
        *slot = part.split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok()).unwrap_or(0);
    }
    n
}

/// Poll a future to completion. burn's remote futures complete on burn's own runtime and
/// wgpu's native ones without a reactor (`engine::device::adapters`), so polling is enough.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// The token in `file` (surrounding whitespace dropped); an empty file is refused.
pub fn read_token_file(file: &std::path::Path) -> crate::Result<String> {
    let text = crate::input_file::read_text(file, crate::input_file::TOKEN)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(crate::Error::input(file, "the token file is empty"));
    }
    Ok(token.to_string())
}

/// A fresh access token: 256 bits from the system's random source.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    crate::rng::os_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `realfill serve` runs.
pub struct Serve {
    pub listen: SocketAddr,
    pub token: String,
    pub device: Device,
    /// The device as people read it ("wgpu: NVIDIA H200 …", "CPU (burn flex, …)").
    pub description: String,
}

/// Bind `listen` (before anything is printed, so a taken port fails first), print the address
/// and serve until Ctrl-C. Clients reach burn's server (on loopback) only through the gate,
/// which checks each one's opening and token first and logs every refusal.
pub fn serve(s: Serve, announce: impl FnOnce(SocketAddr)) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(s.listen).map_err(|e| format!("cannot listen on {}: {e}", s.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let inner = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot listen on loopback for burn's server: {e}"))?;
    let inner_address = inner.local_addr().map_err(|e| e.to_string())?;
    announce(address);
    // Compared as digests: the time taken says nothing about the token.
    let digest = |b: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(b).into() };
    let expected = digest(s.token.as_bytes());
    // The gate has checked and logged each client; burn checks the token again (its port is
    // reachable from this machine), quietly.
    let authorize = move |r: AuthorizationRequest<'_>| {
        if digest(r.credential.as_bytes()) == expected { Ok(()) } else { Err("a wrong token".to_string()) }
    };
    // burn's sessions log through `tracing`; to stderr, beside realfill's own lines (burn
    // would install a subscriber on stdout, which is the address's). burn's WebSocket server
    // warns "rejected or failed" at the end of every session, the orderly ones too: the gate
    // logs each session's start, end and every refusal instead.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wgpu=warn,burn_remote::transport::websocket::server=error")
    });
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
    let gate = gate::Gate { token_digest: expected, inner: inner_address, log };
    std::thread::Builder::new()
        .name("realfill-gate".into())
        .spawn(move || gate::run(gate, listener))
        .map_err(|e| e.to_string())?;
    let cpu = s.device == Device::flex();
    let info = ServerInfo::here(!cpu, &s.description);
    let server = RemoteServer::new([s.device.clone()]).with_authorizer(authorize);
    let server = if cpu {
        server.with_custom_op::<burn::backend::Flex, _>(HELLO, hello_handler::<burn::backend::Flex>(info))
    } else {
        server.with_custom_op::<burn::backend::Cube, _>(HELLO, hello_handler::<burn::backend::Cube>(info))
    };
    server.serve(WebSocketTransport::from_listener(inner)).map_err(|e| format!("the server stopped: {e}"))
}

/// The server's answer to `HELLO`: its versions, whether it is a GPU, its device.
fn hello_handler<B: BackendIr>(
    info: ServerInfo,
) -> impl Fn(&mut HandleContainer<B::Handle>, &CustomOpIr, &B::Device) + Send + Sync + 'static {
    move |handles, op, device| {
        let client: Vec<u64> = op.scalars.iter().map(|s| if let ScalarIr::UInt(v) = s { *v } else { 0 }).collect();
        let client = client.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
        if client != info.realfill {
            log(&format!(
                "a client running realfill {client} asked; this server runs realfill {}: the client refuses to use it",
                info.realfill
            ));
        }
        let data = burn::tensor::TensorData::new(info.encode(), [HELLO_LEN]);
        let tensor = B::float_from_data(data, device);
        handles.register_float_tensor::<B>(&op.outputs[0].id, tensor);
    }
}

/// A server log line (stderr, with the time, as burn's own lines).
fn log(msg: &str) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    eprintln!("{h:02}:{m:02}:{s:02} UTC realfill: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert_eq!(parse_url("ws://gpu:7860").unwrap(), "ws://gpu:7860");
        assert_eq!(parse_url("ws://127.0.0.1:7860/").unwrap(), "ws://127.0.0.1:7860");
        assert!(parse_url("gpu:7860").unwrap_err().contains("ws://HOST:PORT"));
        assert!(parse_url("wss://gpu:7860").unwrap_err().contains("SSH tunnel"));
        assert!(parse_url("ws://gpu").is_err());
        assert!(parse_url("ws://gpu:0").is_err());
        assert!(parse_url("ws://gpu:99999").is_err());
        assert!(parse_url("ws://:80").is_err());
    }

    #[test]
    fn the_greeting_survives_its_encoding() {
        let info = ServerInfo::here(true, "wgpu: NVIDIA H200 (DiscreteGpu, Vulkan)");
        assert_eq!(ServerInfo::decode(&info.encode()), Some(info));
        assert_eq!(version_numbers("0.1.0"), [0, 1, 0]);
        assert_eq!(version_numbers("1.22.3-beta"), [1, 22, 3]);
    }

    #[test]
    fn another_version_is_refused_with_both_named() {
        let here = ServerInfo::here(true, "wgpu: X");
        assert!(same_versions("ws://h:1", &here).is_ok());
        let other = ServerInfo { realfill: "0.2.0".into(), ..here.clone() };
        let e = same_versions("ws://h:1", &other).unwrap_err();
        assert!(
            e.contains("realfill 0.2.0 (burn 0.22.1)") && e.contains(&format!("this is realfill {VERSION}")),
            "{e}"
        );
        let other = ServerInfo { burn: "0.23.0".into(), ..here };
        assert!(same_versions("ws://h:1", &other).unwrap_err().contains("(burn 0.23.0)"));
        let e = connect_error("ws://h:1", ConnectError::IncompatibleProtocol { client_version: 7, server_version: 8 });
        assert!(e.contains("remote protocol 8") && e.contains("speaks 7"), "{e}");
        assert!(connect_error("ws://h:1", ConnectError::Unauthorized).contains("refused the token"));
    }

    #[test]
    fn burn_version_is_the_locked_one() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
        let at = lock.find("name = \"burn\"\n").expect("burn in Cargo.lock");
        let version = lock[at..].lines().nth(1).unwrap();
        assert_eq!(version, format!("version = \"{BURN_VERSION}\""));
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!format!("{:?}", Server { url: "ws://h:1".into(), token: a.clone() }).contains(&a));
    }
}
