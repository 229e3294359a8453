//! Backend choice. wgpu only when a real GPU adapter exists (software Vulkan such as lavapipe
//! is far slower than the CPU backend for this work); otherwise burn's flex CPU backend.

use burn::prelude::*;
use burn::tensor::DeviceKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum BackendChoice {
    /// wgpu on a real GPU when there is one, else the CPU backend.
    Auto,
    /// burn's wgpu backend (any adapter, software ones included).
    Wgpu,
    /// burn's flex CPU backend.
    Cpu,
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
    let list = block_on(instance.enumerate_adapters(backends));
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

/// wgpu's native futures complete without a reactor; poll to completion.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// Run one tiny computation to prove a device works (wgpu initialises lazily and panics on
/// failure; we want a message and a fallback instead).
fn probe(device: &Device) -> Result<(), String> {
    let d = device.clone();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [3]), &d);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(prev);
    match r {
        Ok(v) if (v - 6.0).abs() < 1e-4 => Ok(()),
        Ok(v) => Err(format!("probe computed {v} instead of 6")),
        Err(p) => Err(panic_message(&p)),
    }
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

/// Pick a device. Returns it, a description, and a warning when we fell back.
pub fn pick(choice: BackendChoice) -> (Device, String, Option<String>) {
    let cpu = || (Device::flex(), cpu_description());
    let want_wgpu = match choice {
        BackendChoice::Cpu => false,
        BackendChoice::Wgpu => true,
        BackendChoice::Auto => adapters().iter().any(|a| a.is_real_gpu),
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
