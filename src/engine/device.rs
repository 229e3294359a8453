//! Backend choice. wgpu only when a real GPU adapter exists (software Vulkan such as lavapipe
//! is far slower than the CPU backend for this work); otherwise burn's flex CPU backend.

use burn::prelude::*;
use burn::tensor::DeviceKind;

use crate::remote;

/// Where burn's computations run. On the command line: `auto`, `wgpu`, `cpu` or
/// `remote=ws://HOST:PORT` (the token comes separately: `--token-file`, `REALFILL_REMOTE_TOKEN`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackendChoice {
    /// wgpu on a real GPU when there is one, else the CPU backend.
    Auto,
    /// burn's wgpu backend (any adapter, software ones included).
    Wgpu,
    /// burn's flex CPU backend.
    Cpu,
    /// A GPU server (`realfill serve`) on another machine.
    Remote(remote::Server),
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "wgpu" => Ok(BackendChoice::Wgpu),
            "cpu" => Ok(BackendChoice::Cpu),
            _ => match s.strip_prefix("remote=") {
                Some(url) => {
                    Ok(BackendChoice::Remote(remote::Server { url: remote::parse_url(url)?, token: String::new() }))
                }
                None => Err(format!("{s}: the backend is auto, wgpu, cpu or remote=ws://HOST:PORT")),
            },
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendChoice::Auto => f.write_str("auto"),
            BackendChoice::Wgpu => f.write_str("wgpu"),
            BackendChoice::Cpu => f.write_str("cpu"),
            BackendChoice::Remote(s) => write!(f, "remote={}", s.url),
        }
    }
}

impl BackendChoice {
    /// A remote choice takes its token from `file`, else from `REALFILL_REMOTE_TOKEN`
    /// (`remote::connect` says so when there is none). Local choices are returned as they are.
    pub fn with_token(self, file: Option<&std::path::Path>) -> crate::Result<BackendChoice> {
        let BackendChoice::Remote(mut server) = self else { return Ok(self) };
        server.token = match file {
            Some(f) => remote::read_token_file(f)?,
            None => std::env::var(remote::TOKEN_ENV).unwrap_or_default().trim().to_string(),
        };
        Ok(BackendChoice::Remote(server))
    }
}

#[derive(Clone, Debug)]
pub struct AdapterInfo {
    pub name: String,
    pub kind: String,
    pub backend: String,
    pub is_real_gpu: bool,
}

/// The adapters wgpu can see (cheap; opens no device).
pub fn adapters() -> Vec<AdapterInfo> {
    // Compute backends only: the GL backend is no use for compute and its EGL probe prints
    // Wayland errors on machines without a session.
    // WGPU_BACKEND (wgpu's own variable, e.g. "vulkan") narrows the search.
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY) & wgpu::Backends::PRIMARY;
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let list = remote::block_on(instance.enumerate_adapters(backends));
    list.iter()
        .map(|a| {
            let i = a.get_info();
            AdapterInfo {
                name: i.name.clone(),
                kind: format!("{:?}", i.device_type),
                backend: format!("{:?}", i.backend),
                is_real_gpu: matches!(
                    i.device_type,
                    wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu
                ),
            }
        })
        .collect()
}

/// Run one tiny computation to prove a device works (wgpu initialises lazily and panics on
/// failure; we want a message and a fallback instead).
pub fn probe(device: &Device) -> Result<(), String> {
    let d = device.clone();
    let r = catch_quietly(move || {
        let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [3]), &d);
        t.sum().into_scalar::<f32>()
    });
    match r {
        Ok(v) if (v - 6.0).abs() < 1e-4 => Ok(()),
        Ok(v) => Err(format!("probe computed {v} instead of 6")),
        Err(p) => Err(panic_message(&p)),
    }
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind` without the panic's print: the caller reports it (a lost GPU server, a
/// wgpu device that fails to start). Other threads' panics still print: the hook is chained
/// and silent only on this thread, only while `f` runs.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    let was = QUIET_PANICS.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(was));
    r
}

pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

pub fn cpu_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// What runs on the CPU: burn's flex backend and, chosen once with it, realfill's own kernels
/// (`kernels::plan`).
fn cpu_description() -> String {
    let plan = crate::kernels::plan();
    let kernels = match (plan.cpu_network, plan.fused_attention) {
        (true, true) => "CPU network and fused attention",
        (true, false) => "CPU network",
        (false, true) => "fused attention",
        (false, false) => "none",
    };
    format!("CPU (burn flex, {} threads; realfill kernels: {kernels}, {:?})", cpu_threads(), plan.simd)
}

/// Pick a device. Returns it, a description, and a warning when we fell back; an error only
/// for a GPU server that cannot be used (a local choice always has the CPU to fall back on).
pub fn pick(choice: &BackendChoice) -> Result<(Device, String, Option<String>), String> {
    if let BackendChoice::Remote(server) = choice {
        let (device, info) = remote::connect(server)?;
        let gpu = if info.gpu { "" } else { " — a CPU, not a GPU" };
        return Ok((device, format!("GPU server {}: {}{gpu}", server.url, info.description), None));
    }
    Ok(pick_local(choice))
}

/// `pick` for the choices on this machine (a remote one counts as `Auto`).
pub fn pick_local(choice: &BackendChoice) -> (Device, String, Option<String>) {
    let cpu = || (Device::flex(), cpu_description());
    let want_wgpu = match choice {
        BackendChoice::Cpu => false,
        BackendChoice::Wgpu => true,
        BackendChoice::Auto | BackendChoice::Remote(_) => adapters().iter().any(|a| a.is_real_gpu),
    };
    if !want_wgpu {
        let (d, s) = cpu();
        return (d, s, None);
    }
    let list = adapters();
    let best = list.iter().find(|a| a.is_real_gpu).or(list.first()).cloned();
    let Some(best) = best else {
        let (d, s) = cpu();
        return (d, s, Some("no wgpu adapter found; using the CPU backend".into()));
    };
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    match probe(&device) {
        Ok(()) => (device, format!("wgpu: {} ({}, {})", best.name, best.kind, best.backend), None),
        Err(e) => {
            let (d, s) = cpu();
            (d, s, Some(format!("wgpu adapter {} failed ({e}); using the CPU backend", best.name)))
        }
    }
}
