//! The command line: `fill`, `learn`, `eval`, `bench`, `quantize`. Every command drives the same engine
//! (Jobs in, Events out) that the app uses, and prints progress instead of drawing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::budget;
use crate::engine::{BackendChoice, Engine, Event, FillOutput, FillSettings, Job};
use crate::error::{Error, Result};
use crate::scene::io::{image_size, load_mask, load_photo, load_reference, same_file, save_atomic};
use crate::scene::{Extension, Scene};
use crate::settings::{EngineKind, RunSettings, SamplerKind, defaults};
use crate::switches::Switches;

#[derive(Parser, Debug)]
#[command(
    name = "realfill",
    version,
    about = "Complete photos from the scene's own reference photos",
    long_about = "Complete photos from the scene's own reference photos.\n\nWith no command, opens the app on the \
                  bundled demo scene; `realfill PHOTO` opens a photo (or a .realfill project) in the app.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Photo or project (.realfill) to open in the app.
    pub photo: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fill the masked region (and/or an extended border) of a target photo.
    Fill(FillArgs),
    /// Learn the scene model ahead of a fill (cached on disk).
    Learn(LearnArgs),
    /// Fill every scene folder in DIR and score it against truth.png.
    Eval(EvalArgs),
    /// Time learning and sampling steps on the available backends.
    #[cfg(feature = "dev-tools")]
    Bench(crate::dev::bench::BenchArgs),
    /// Check that the scene model computes what bench/torch_reference.py's PyTorch network
    /// computes on the same weights (and, with --time, time both steps for that script).
    #[cfg(feature = "dev-tools")]
    #[command(hide = true)]
    TorchCheck(crate::dev::torch_check::TorchCheckArgs),
    /// Serve this machine's GPU (or CPU) to realfill on other machines: burn's remote backend
    /// over WebSocket, behind an access token (README, "GPU server").
    Serve(ServeArgs),
    /// Write a copy of a Stable Diffusion folder whose UNet and text encoder hold their weights
    /// block-wise quantised (8-bit int8 or 4-bit NF4): less memory for fills and for learning.
    Quantize(QuantizeArgs),
    /// Check realfill's Stable Diffusion networks against diffusers' outputs on the same
    /// inputs (bench/diffusers_reference.py writes model and IO file).
    #[cfg(feature = "dev-tools")]
    SdCheck(crate::dev::sd_check::SdCheckArgs),
    /// Write a Stable Diffusion folder of SD-2-inpainting's shape with random weights (for
    /// `bench --sd-model` where no weights can be downloaded; not for pictures).
    #[cfg(feature = "dev-tools")]
    SdRandom(crate::dev::sd_random::SdRandomArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SceneArgs {
    /// The photo to complete.
    #[arg(long, required_unless_present = "demo")]
    pub target: Option<PathBuf>,
    /// Mask image of the target's size: white (≥128) = fill, black = keep.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Grow the canvas by L,T,R,B pixels (outpainting); the new border is filled.
    #[arg(long, value_name = "L,T,R,B", allow_hyphen_values = true)]
    pub extend: Option<String>,
    /// Reference photos of the same scene (one or more; the flag may repeat).
    #[arg(long = "ref", num_args = 1.., value_name = "REF")]
    pub refs: Vec<PathBuf>,
    /// Use the bundled demo scene (assets/demo) instead of --target/--mask/--ref.
    #[arg(long, conflicts_with_all = ["target", "mask", "refs"])]
    pub demo: bool,
}

/// The run settings (clap reads `RunSettings` itself: its fields declare their flags) and how
/// this run reaches the engine. `display_order`: the flags below sit between the run settings'
/// in `--help`, where they always were.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    #[command(flatten)]
    pub run: RunSettings,
    /// Where burn computes: auto (a GPU here when there is one, else the CPU), wgpu, cpu, or
    /// remote=ws://HOST:PORT — a GPU server started with `realfill serve` (README, "GPU server").
    #[arg(long, default_value_t = BackendChoice::Auto, display_order = 102)]
    pub backend: BackendChoice,
    /// The GPU server's access token, as `realfill serve` printed it (else from
    /// $REALFILL_REMOTE_TOKEN).
    #[arg(long, value_name = "FILE", display_order = 103)]
    pub token_file: Option<PathBuf>,
    /// Do not read or write the scene-model cache.
    #[arg(long, display_order = 107)]
    pub no_cache: bool,
    /// No progress output.
    #[arg(long, short, display_order = 108)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Denoising steps. Scene model: 3 by default — few is better for a model learned in
    /// minutes, each step adds its small errors (docs/BENCHMARKS.md). Stable Diffusion: 25 by
    /// default, with dpm-solver (diffusers' documented Stable Diffusion 2 inpainting example).
    /// The patch engine runs its own coarse-to-fine schedule.
    #[arg(long)]
    pub steps: Option<usize>,
    /// The sampler. Default: ddim for the scene model; dpm-solver for Stable Diffusion (what
    /// diffusers' Stable Diffusion 2 documentation recommends and runs SD-2 inpainting with,
    /// at 25 steps).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
}

impl SampleArgs {
    /// Set the sampling flags on `run`: one `--steps` and one `--sampler` for every engine,
    /// each with its own default when it is left out.
    fn apply(&self, run: &mut RunSettings) {
        if let Some(n) = self.steps {
            run.steps = n;
            run.sd.steps = n;
        }
        if let Some(k) = self.sampler {
            run.sampler = k;
            run.sd.sampler = k;
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct FillArgs {
    #[command(flatten)]
    pub scene: SceneArgs,
    /// Where to write the result, in the format its extension names (.png, .jpg, .webp, .tif,
    /// .bmp, .gif, .ppm, .tga, .qoi, .ico). Never one of the inputs; an existing regular file
    /// is replaced, a symbolic link is written through (the file it points to gets the result),
    /// devices, pipes and sockets are refused.
    #[arg(long)]
    pub out: PathBuf,
    /// JPEG quality of a .jpg result, 1–100. Every format that holds them keeps the target's
    /// colour profile and EXIF (camera, lens, date, location, copyright).
    #[arg(long, default_value_t = crate::scene::io::JPEG_QUALITY, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Sample K candidates (seeds S, S+1, …), ranked by how well their filled patches are
    /// explained by the references: the best goes to --out, the others to NAME-2.png, ….
    #[arg(long, default_value_t = defaults::CANDIDATES)]
    pub candidates: usize,
    #[command(flatten)]
    pub sampling: SampleArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LearnArgs {
    #[command(flatten)]
    pub scene: SceneArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Folder of scene folders (target.png, mask.png, refs/, truth.png).
    pub dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only scenes whose folder name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    #[command(flatten)]
    pub sampling: SampleArgs,
    /// Also write each fill as DIR_OUT/<scene>.png, and DIR_OUT/<scene>-sources.png: the fill
    /// tinted by where its pixels came from (blue, orange, green…: the references in the order
    /// the table names them; magenta: invented)
    #[arg(long)]
    pub save: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// The Stable Diffusion folder (diffusers layout) to quantise; it is only read.
    #[arg(long)]
    pub model: PathBuf,
    /// 8: int8 codes; 4: NF4 codes (QLoRA's 4-bit NormalFloat), two per byte.
    #[arg(long)]
    pub bits: u8,
    /// The folder to write (a new one): the whole model, loaded with `--model` like any other.
    #[arg(long)]
    pub out: PathBuf,
    /// Values per block along a layer's input dimension, each block with its own scale.
    #[arg(long, default_value_t = 64)]
    pub block: usize,
}

fn cmd_quantize(a: &QuantizeArgs) -> Result<()> {
    use crate::diffusion::sd::quantize;
    let Some(scheme) = quantize::scheme_for_bits(a.bits, a.block) else {
        return Err(Error::Invalid(format!(
            "--bits {}: realfill writes 8-bit (int8) or 4-bit (NF4) weights; use --bits 8 or --bits 4",
            a.bits
        )));
    };
    if !(8..=4096).contains(&a.block) || !a.block.is_multiple_of(2) {
        return Err(Error::Invalid(format!("--block {}: use an even number from 8 to 4096 (64 by default)", a.block)));
    }
    let mb = |b: u64| b as f64 / 1e6;
    quantize::quantize_folder(&a.model, &a.out, scheme, &mut |r| {
        eprintln!(
            "{}: {} weights packed ({} values), {} tensors kept; {:.0} MB → {:.0} MB",
            r.name,
            r.packed,
            r.packed_values,
            r.kept,
            mb(r.bytes_before),
            mb(r.bytes_after)
        )
    })?;
    println!(
        "wrote {}: UNet and text encoder as {}; fill with --model {}",
        a.out.display(),
        scheme.describe(),
        a.out.display()
    );
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address and port to listen on. This machine only by default: from another machine, reach
    /// it through an SSH tunnel (`ssh -L 7878:127.0.0.1:7878 gpu-machine`).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: std::net::SocketAddr,
    /// Allow listening on an address other machines reach directly. The connection is not
    /// encrypted (the token and the images travel readable): only on a network you trust.
    #[arg(long)]
    pub allow_network: bool,
    /// What computes: auto (the GPU when there is one), wgpu, or cpu.
    #[arg(long, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Read the access token from FILE instead of generating a fresh one.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Resolved input paths.
pub struct ScenePaths {
    pub target: PathBuf,
    pub mask: Option<PathBuf>,
    pub refs: Vec<PathBuf>,
    pub extension: Extension,
}

pub fn scene_paths(a: &SceneArgs) -> Result<ScenePaths> {
    let extension = match &a.extend {
        Some(s) => Extension::parse(s)?,
        None => Extension::default(),
    };
    if a.demo {
        let d = crate::scene::demo::files()?;
        return Ok(ScenePaths { target: d.target, mask: Some(d.mask), refs: d.refs, extension });
    }
    let target = a.target.clone().ok_or_else(|| Error::Invalid("--target is required (or --demo)".into()))?;
    if a.refs.len() > crate::settings::MAX_REFERENCES {
        return Err(Error::Invalid(format!(
            "{} references given; a scene takes at most {}: choose the ones that show the missing part",
            a.refs.len(),
            crate::settings::MAX_REFERENCES
        )));
    }
    Ok(ScenePaths { target, mask: a.mask.clone(), refs: a.refs.clone(), extension })
}

/// Load the scene's files. `learning`: the job's batch, crop and working size when it learns
/// the scene model.
/// The job is checked against the memory budget (`engine::budget`; `memory_gib`: the job's
/// own, `REALFILL_MEMORY_GIB`) from the target and the references' headers before they are
/// decoded; references are downscaled as they load.
pub fn load_scene(
    p: &ScenePaths,
    learning: Option<(usize, usize, usize)>,
    memory_gib: Option<f64>,
    warn: &mut dyn FnMut(String),
) -> Result<Scene> {
    let target = load_photo(&p.target)?;
    let canvas = p.extension.canvas(target.width(), target.height());
    if canvas.0 as u64 * canvas.1 as u64 > crate::scene::io::MAX_PIXELS {
        // Scene::new says so with the numbers; say it before reading the references.
        return Scene::new(target, None, p.extension, vec![]);
    }
    let mut ref_paths: Vec<&PathBuf> = Vec::new();
    for (i, r) in p.refs.iter().enumerate() {
        if same_file(r, &p.target) {
            warn(format!("{}: this reference is the target itself; it adds nothing and is skipped", r.display()));
        } else if p.refs[..i].iter().any(|q| same_file(q, r)) {
            warn(format!("{}: given twice; using it once", r.display()));
        } else {
            ref_paths.push(r);
        }
    }
    let refs_kept = ref_paths.iter().filter_map(|r| image_size(r)).map(|s| budget::reference_size(s, canvas)).collect();
    let learning = learning.map(|(batch, crop, size)| budget::learning(batch, crop, canvas, size));
    budget::check(&budget::Demand { canvas, refs: refs_kept, learning }, memory_gib)?;
    let mask = match &p.mask {
        Some(m) => Some((load_mask(m)?, m.as_path())),
        None => None,
    };
    if target.transparent.is_some() {
        warn(format!("{}: transparent pixels are treated as part of the fill region", p.target.display()));
    }
    let long_side = budget::reference_long_side(canvas);
    let refs = ref_paths.iter().map(|r| load_reference(r, long_side).map(Arc::new)).collect::<Result<Vec<_>>>()?;
    if refs.is_empty() {
        warn("no reference photos: the fill learns only from the target's known pixels".into());
    }
    Scene::new(target, mask, p.extension, refs)
}

/// The learning batch, crop and working size when a job with these settings learns the scene
/// model.
fn learning_of(s: &FillSettings, learns: bool) -> Option<(usize, usize, usize)> {
    (learns || s.engine.resolve() == EngineKind::SceneModel).then_some((s.learn.batch, s.learn.crop, s.size))
}

/// A job's settings: the run settings as clap read them, with the command's own sampling
/// flags and candidates (validated in `FillSettings::apply_run`), under the switches `sw`.
fn settings(m: &ModelArgs, sampling: Option<&SampleArgs>, candidates: usize, sw: &Switches) -> Result<FillSettings> {
    let mut run = m.run.clone();
    if let Some(a) = sampling {
        a.apply(&mut run);
    }
    run.candidates = candidates;
    let mut s = FillSettings::from_run(&run)?.with_switches(sw)?;
    s.use_cache = !m.no_cache;
    Ok(s)
}

/// `realfill serve`: check the flags, pick the device, print how to reach it, serve until
/// Ctrl-C.
pub fn cmd_serve(a: &ServeArgs) -> Result<()> {
    if matches!(a.backend, BackendChoice::Remote(_)) {
        return Err(Error::Invalid("--backend: a server computes here: give auto, wgpu or cpu".into()));
    }
    if !a.listen.ip().is_loopback() && !a.allow_network {
        return Err(Error::Invalid(format!(
            "--listen {}: other machines could reach this server, and its connection is not encrypted; \
             keep 127.0.0.1 and use an SSH tunnel (README, \"GPU server\"), or add --allow-network on a network you trust",
            a.listen
        )));
    }
    let token = match &a.token_file {
        Some(f) => crate::remote::read_token_file(f)?,
        None => crate::remote::new_token(),
    };
    let (device, mut description, warning) = crate::engine::device::pick_local(&a.backend);
    if device == burn::prelude::Device::flex() {
        // Clients' work arrives as burn operations: realfill's own CPU kernels serve local runs only.
        description = format!("CPU (burn flex, {} threads)", crate::engine::device::cpu_threads());
    }
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let serve =
        crate::remote::Serve { listen: a.listen, token: token.clone(), device, description: description.clone() };
    let from_file = a.token_file.as_ref().map(|f| f.display().to_string());
    crate::remote::serve(serve, |address| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "realfill {} GPU server (burn {})", crate::remote::VERSION, crate::remote::BURN_VERSION);
        let _ = writeln!(out, "device: {description}");
        let _ = writeln!(out, "listening on ws://{address}");
        let _ = match &from_file {
            Some(f) => writeln!(out, "token: the one in {f}"),
            None => writeln!(out, "token: {token}"),
        };
        let _ = writeln!(
            out,
            "clients: --backend remote=ws://{address} with the token in --token-file FILE or ${}; Ctrl-C stops",
            crate::remote::TOKEN_ENV
        );
        let _ = out.flush();
    })
    .map_err(Error::Invalid)
}

/// Drives one job and renders its events on stderr.
pub struct Driver {
    engine: Engine,
    quiet: bool,
}

impl Driver {
    /// An engine on `m`'s backend (a GPU server's token read here).
    pub fn new(m: &ModelArgs, quiet: bool) -> Result<Driver> {
        let backend = m.backend.clone().with_token(m.token_file.as_deref())?;
        Ok(Driver { engine: Engine::start(backend), quiet })
    }

    /// Run a job to its end: a fill's candidates in the order they were done (none for
    /// learning).
    pub fn run(&self, job: Job) -> Result<Vec<FillOutput>> {
        let mut done = Vec::new();
        let learned = match &job {
            Job::Learn { settings, .. } if settings.engine == EngineKind::StableDiffusion => "the scene's LoRA",
            _ => "scene model",
        };
        self.engine.submit(job);
        let style = ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let mut bar: Option<(ProgressBar, &'static str)> = None;
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let new_bar = |prefix: &'static str, len: usize| {
            let b = if self.quiet { ProgressBar::hidden() } else { ProgressBar::new(len as u64) };
            b.set_style(style.clone());
            b.set_prefix(prefix);
            b
        };
        for ev in self.engine.events().iter() {
            match ev {
                Event::Backend { description, warning } => {
                    if let Some(w) = warning {
                        eprintln!("warning: {w}");
                    }
                    if !self.quiet {
                        eprintln!("backend: {description}");
                    }
                }
                Event::Status(s) => {
                    if !self.quiet {
                        match &bar {
                            Some((b, _)) => b.println(s),
                            None => eprintln!("{s}"),
                        }
                    }
                }
                Event::Learning { step, total, loss, elapsed_s } => {
                    // indicatif draws only on a terminal; elsewhere print every 10%.
                    if !self.quiet && !tty && (step % (total / 10).max(1) == 0 || step == total) {
                        let eta = elapsed_s / step as f32 * (total - step) as f32;
                        eprintln!("learning {step}/{total} loss {loss:.4} elapsed {elapsed_s:.0}s ETA {eta:.0}s");
                    }
                    if bar.as_ref().is_none_or(|(_, k)| *k != "learning") {
                        bar = Some((new_bar("learning", total), "learning"));
                    }
                    let b = &bar.as_ref().unwrap().0;
                    b.set_position(step as u64);
                    b.set_message(format!("loss {loss:.4}"));
                    if step == total {
                        b.finish();
                    }
                }
                Event::Preview { step, total, .. } => {
                    if !self.quiet && !tty && (step % (total / 5).max(1) == 0 || step == total) {
                        eprintln!("sampling {step}/{total}");
                    }
                    if bar.as_ref().is_none_or(|(_, k)| *k != "sampling") {
                        bar = Some((new_bar("sampling", total), "sampling"));
                    }
                    let b = &bar.as_ref().unwrap().0;
                    b.set_position(step as u64);
                    if step == total {
                        b.finish();
                    }
                }
                Event::Warning(w) => eprintln!("warning: {w}"),
                Event::NativeTile(t) => {
                    if !self.quiet && !tty && t.rows_done == t.rows {
                        eprintln!("full-resolution detail done ({} rows)", t.rows);
                    }
                }
                Event::Learned { cached } => {
                    if !self.quiet {
                        eprintln!(
                            "{}",
                            if cached {
                                format!("{learned} already learned (cache)")
                            } else {
                                format!("{learned} learned")
                            }
                        );
                    }
                    return Ok(done);
                }
                Event::Done(out) => {
                    let last = out.candidate + 1 >= out.candidates;
                    done.push(*out);
                    if last {
                        return Ok(done);
                    }
                }
                // The worker's message is complete (it names the file, or says "engine:").
                Event::Failed(msg) => return Err(Error::Invalid(msg)),
                Event::ServerLost(msg) => return Err(Error::Server(msg)),
                Event::Cancelled { .. } => return Err(Error::Cancelled),
            }
        }
        Err(Error::Engine("the engine stopped unexpectedly".into()))
    }
}

fn check_output(out: &Path, p: &ScenePaths) -> Result<()> {
    let inputs = std::iter::once(&p.target).chain(p.mask.iter()).chain(p.refs.iter());
    for i in inputs {
        if same_file(out, i) {
            return Err(Error::output(
                out,
                format!(
                    "it is one of the inputs ({}); choose another --out so the original stays untouched",
                    i.display()
                ),
            ));
        }
    }
    crate::scene::io::check_output_path(out)?;
    Ok(())
}

/// Where candidate `rank` (0 = best) goes: --out itself, then NAME-2.EXT, NAME-3.EXT, ….
pub fn candidate_path(out: &Path, rank: usize) -> PathBuf {
    if rank == 0 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = out.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    out.with_file_name(format!("{stem}-{}{ext}", rank + 1))
}

pub fn cmd_fill(a: &FillArgs) -> Result<()> {
    let paths = scene_paths(&a.scene)?;
    let s = settings(&a.model, Some(&a.sampling), a.candidates, crate::switches::get())?;
    for rank in 0..a.candidates {
        check_output(&candidate_path(&a.out, rank), &paths)?;
    }
    let quiet = a.model.quiet;
    let scene = Arc::new(load_scene(&paths, learning_of(&s, false), s.memory_gib, &mut |w| eprintln!("warning: {w}"))?);
    let (cw, ch) = scene.canvas_size();
    for rank in 0..a.candidates {
        crate::scene::io::check_output_size(&candidate_path(&a.out, rank), cw, ch)?;
    }
    let driver = Driver::new(&a.model, quiet)?;
    let outs: Vec<(u64, FillOutput)> = driver
        .run(Job::Fill { scene: scene.clone(), settings: s.clone(), candidates: a.candidates })?
        .into_iter()
        .map(|out| (out.seed, out))
        .collect();
    if outs.is_empty() {
        return Err(Error::Engine("no result".into()));
    }
    if a.candidates > 1 && !quiet {
        for (seed, out) in &outs {
            eprintln!("candidate seed {seed}: agreement with the references {:.2} dB", out.agreement.unwrap_or(0.0));
        }
    }
    let mut outs = outs;
    // Best agreement first (stable: equal scores keep seed order).
    outs.sort_by(|x, y| y.1.agreement.unwrap_or(0.0).total_cmp(&x.1.agreement.unwrap_or(0.0)));
    for (rank, (seed, out)) in outs.iter().enumerate() {
        let path = candidate_path(&a.out, rank);
        crate::scene::io::save_with(&out.image, &path, &scene.target.metadata, a.quality)?;
        if quiet {
            continue;
        }
        let left_out = crate::scene::io::metadata_left_out(&path, &scene.target.metadata);
        if !left_out.is_empty() {
            eprintln!(
                "note: {}: written without the target's {}, which realfill cannot put in this format (PNG, JPEG and TIFF keep it)",
                path.display(),
                left_out.join(" and ")
            );
        }
        let t = &out.timings;
        let ranked = if a.candidates > 1 {
            format!(
                " [rank {} of {}, seed {seed}, agreement {:.2} dB]",
                rank + 1,
                a.candidates,
                out.agreement.unwrap_or(0.0)
            )
        } else {
            String::new()
        };
        let learned = match t.engine {
            EngineKind::Patch => "patch engine, no learning".to_string(),
            EngineKind::StableDiffusion => {
                format!(
                    "Stable Diffusion {}",
                    if t.model_cached { "already loaded".into() } else { format!("loaded in {:.1}s", t.learn_s) }
                )
            }
            _ => format!("{} {:.1}s", if t.model_cached { "cached scene model" } else { "learning" }, t.learn_s),
        };
        eprintln!(
            "wrote {} ({}×{}){ranked}; prepare {:.1}s, {learned}, sampling {:.1}s (first preview {:.2}s), native detail {:.2}s, composite {:.2}s, total {:.1}s",
            path.display(),
            out.image.width(),
            out.image.height(),
            t.prepare_s,
            t.sample_s,
            t.first_preview_s,
            t.detail_s,
            t.composite_s,
            t.total_s
        );
        eprintln!("the fill came from: {}", out.sources.describe(&ref_names(&scene)));
    }
    Ok(())
}

/// The references' file names, as the source shares name them.
fn ref_names(scene: &crate::scene::Scene) -> Vec<String> {
    scene
        .refs
        .iter()
        .map(|r| r.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()))
        .collect()
}

pub fn cmd_learn(a: &LearnArgs) -> Result<()> {
    if a.model.run.engine == EngineKind::Patch {
        return Err(Error::Invalid(
            "the patch engine learns nothing: `learn` learns the scene model (leave out --engine, or \
             use --engine scene); `fill --engine patch` fills without learning"
                .into(),
        ));
    }
    let paths = scene_paths(&a.scene)?;
    let s = settings(&a.model, None, defaults::CANDIDATES, crate::switches::get())?;
    let scene = load_scene(&paths, learning_of(&s, true), s.memory_gib, &mut |w| eprintln!("warning: {w}"))?;
    let driver = Driver::new(&a.model, a.model.quiet)?;
    let t = Instant::now();
    driver.run(Job::Learn { scene: Arc::new(scene), settings: s })?;
    if !a.model.quiet {
        eprintln!("done in {:.1}s", t.elapsed().as_secs_f32());
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct EvalRow {
    scene: String,
    kind: String,
    engine: EngineKind,
    psnr: f64,
    ssim: f64,
    /// Gradient energy of the result ÷ the truth's inside the mask (eval::detail_ratio).
    detail: f64,
    seconds: f32,
    learn_seconds: f32,
    aligned_refs: usize,
    guide_coverage: f32,
    /// Where the fill came from (`describe_sources`).
    sources: String,
}

pub fn cmd_eval(a: &EvalArgs) -> Result<()> {
    let mut dirs: Vec<PathBuf> = list_dirs(&a.dir)?;
    if let Some(o) = &a.only {
        dirs.retain(|d| d.file_name().is_some_and(|n| n.to_string_lossy().contains(o.as_str())));
    }
    if dirs.is_empty() {
        return Err(Error::input(&a.dir, "no scene folders (with target.png) found"));
    }
    if let Some(s) = &a.save {
        std::fs::create_dir_all(s).map_err(|e| Error::output(s, e.to_string()))?;
    }
    let s = settings(&a.model, Some(&a.sampling), defaults::CANDIDATES, crate::switches::get())?;
    let driver = Driver::new(&a.model, a.model.quiet || a.json)?;
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    // Every scene that can be scored is; a bad one is named with its reason and the run goes on.
    for d in dirs {
        let name = d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        match eval_scene(&d, &name, &s, &driver, a.save.as_deref()) {
            Ok(row) => {
                if !a.json {
                    eprintln!(
                        "{:<22} PSNR {:6.2} dB  SSIM {:.3}  detail {:.2}  {:6.1}s (aligned refs {}, coverage {:.0}%; {})",
                        row.scene,
                        row.psnr,
                        row.ssim,
                        row.detail,
                        row.seconds,
                        row.aligned_refs,
                        100.0 * row.guide_coverage,
                        row.sources
                    );
                }
                rows.push(row);
            }
            Err(e @ (Error::Cancelled | Error::Server(_))) => return Err(e),
            Err(e) => {
                if !a.json {
                    eprintln!("{name:<22} not scored: {e}");
                }
                errors.push(EvalError { scene: name, error: e.to_string() });
            }
        }
    }
    print_eval(&rows, &errors, a.json);
    if !errors.is_empty() {
        return Err(Error::Invalid(format!(
            "{} of {} scenes could not be scored: {}",
            errors.len(),
            errors.len() + rows.len(),
            errors.iter().map(|e| e.scene.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct EvalError {
    scene: String,
    error: String,
}

/// A scene folder's references (`refs/`, none when it has no such folder). A score is only
/// worth something when the references are not the answer: a `refs/` that is a symbolic link
/// or a reference that is the scene's truth.png is refused.
fn eval_refs(d: &Path) -> Result<Vec<PathBuf>> {
    let dir = d.join("refs");
    match std::fs::symlink_metadata(&dir) {
        Err(_) => return Ok(Vec::new()),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::input(
                &dir,
                "is a symbolic link; an evaluation scene's refs/ must be a folder of its own (it could lead to the truth)",
            ));
        }
        Ok(_) => {}
    }
    let refs = crate::scene::demo::list_files(&dir)?;
    let truth = d.join("truth.png");
    if let Some(r) = refs.iter().find(|r| same_file(r, &truth)) {
        return Err(Error::input(
            r,
            format!("is the scene's truth {}; a reference must be another photo", truth.display()),
        ));
    }
    Ok(refs)
}

/// Fill one scene folder and score it against its truth.png.
fn eval_scene(d: &Path, name: &str, s: &FillSettings, driver: &Driver, save: Option<&Path>) -> Result<EvalRow> {
    let kind = name.rsplit('-').next().unwrap_or("").to_string();
    let paths = ScenePaths {
        target: d.join("target.png"),
        mask: Some(d.join("mask.png")),
        refs: eval_refs(d)?,
        extension: Extension::default(),
    };
    let scene = load_scene(&paths, learning_of(s, false), s.memory_gib, &mut |_| {})?;
    let truth_path = d.join("truth.png");
    let truth = load_photo(&truth_path)?;
    let (cw, ch) = scene.canvas_size();
    if (truth.width(), truth.height()) != (cw, ch) {
        return Err(Error::input(
            &truth_path,
            format!(
                "truth is {}×{} but the target is {cw}×{ch}; the truth must have the target's size",
                truth.width(),
                truth.height()
            ),
        ));
    }
    let mask = scene.mask.clone();
    let scene_ref_names = ref_names(&scene);
    let t = Instant::now();
    let out = driver
        .run(Job::Fill { scene: Arc::new(scene), settings: s.clone(), candidates: 1 })?
        .pop()
        .ok_or_else(|| Error::Engine("no result".into()))?;
    let secs = t.elapsed().as_secs_f32();
    let result = crate::scene::RgbF {
        width: out.image.width() as usize,
        height: out.image.height() as usize,
        data: out.image.to_rgb32f().into_raw(),
    };
    if let Some(sdir) = save {
        save_atomic(&out.image, &sdir.join(format!("{name}.png")))?;
        // The fill tinted by where its pixels came from (the app's "Tint by source").
        save_atomic(&out.sources.tint(&result).to_image8(), &sdir.join(format!("{name}-sources.png")))?;
    }
    Ok(EvalRow {
        psnr: crate::eval::psnr_masked(&result, &truth.rgb, &mask),
        ssim: crate::eval::ssim_masked(&result, &truth.rgb, &mask),
        detail: crate::eval::detail_ratio(&result, &truth.rgb, &mask),
        scene: name.to_string(),
        kind,
        engine: out.timings.engine,
        seconds: secs,
        learn_seconds: out.timings.learn_s,
        aligned_refs: out.aligned_refs,
        guide_coverage: out.guide_coverage,
        sources: out.sources.describe(&scene_ref_names),
    })
}

/// The eval table (or JSON): every case, then means per mask kind.
fn print_eval(rows: &[EvalRow], errors: &[EvalError], json: bool) {
    let mut kinds: Vec<String> = rows.iter().map(|r| r.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    let means: Vec<serde_json::Value> = kinds
        .iter()
        .map(|k| {
            let rs: Vec<&EvalRow> = rows.iter().filter(|r| &r.kind == k).collect();
            let n = rs.len() as f64;
            serde_json::json!({
                "kind": k, "cases": rs.len(),
                "psnr": rs.iter().map(|r| r.psnr).sum::<f64>() / n,
                "ssim": rs.iter().map(|r| r.ssim).sum::<f64>() / n,
                "detail": rs.iter().map(|r| r.detail).sum::<f64>() / n,
                "seconds": rs.iter().map(|r| r.seconds as f64).sum::<f64>() / n,
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "cases": rows, "means": means, "errors": errors }))
                .unwrap_or_default()
        );
        return;
    }
    println!("{:<24} {:>9} {:>7} {:>7} {:>8}", "scene", "PSNR(dB)", "SSIM", "detail", "seconds");
    for r in rows {
        println!("{:<24} {:>9.2} {:>7.3} {:>7.2} {:>8.1}", r.scene, r.psnr, r.ssim, r.detail, r.seconds);
    }
    for m in &means {
        println!(
            "{:<24} {:>9.2} {:>7.3} {:>7.2} {:>8.1}",
            format!("mean {} ({})", m["kind"].as_str().unwrap_or(""), m["cases"]),
            m["psnr"].as_f64().unwrap_or(f64::NAN),
            m["ssim"].as_f64().unwrap_or(f64::NAN),
            m["detail"].as_f64().unwrap_or(f64::NAN),
            m["seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::input(dir, format!("cannot list folder: {e}")))?;
    let mut v: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("target.png").is_file()).collect();
    v.sort();
    Ok(v)
}

/// Run one headless command (main.rs opens the app when there is none).
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Fill(a) => cmd_fill(&a),
        Command::Learn(a) => cmd_learn(&a),
        Command::Eval(a) => cmd_eval(&a),
        Command::Serve(a) => cmd_serve(&a),
        Command::Quantize(a) => cmd_quantize(&a),
        #[cfg(feature = "dev-tools")]
        Command::Bench(a) => crate::dev::bench::run(&a),
        #[cfg(feature = "dev-tools")]
        Command::TorchCheck(a) => crate::dev::torch_check::run(&a),
        #[cfg(feature = "dev-tools")]
        Command::SdCheck(a) => crate::dev::sd_check::run(&a),
        #[cfg(feature = "dev-tools")]
        Command::SdRandom(a) => crate::dev::sd_random::run(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill_args(flags: &[&str]) -> FillArgs {
        let argv = ["realfill", "fill", "--demo", "--out", "x.png"].iter().chain(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::Fill(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_left_out_are_the_run_settings_defaults() {
        // clap's defaults (on RunSettings' fields) and RunSettings::default must agree: the app
        // and project files start from the latter.
        assert_eq!(fill_args(&[]).model.run, RunSettings::default());
        let s = settings(&fill_args(&[]).model, None, defaults::CANDIDATES, &Switches::default()).unwrap();
        let d = FillSettings::from_run(&RunSettings::default()).unwrap();
        assert_eq!((s.steps, s.sd.steps, s.sampler, s.sd.sampler), (d.steps, d.sd.steps, d.sampler, d.sd.sampler));
    }

    #[test]
    fn flags_land_in_the_run_settings_and_steps_serves_every_engine() {
        let a = fill_args(&[
            "--engine",
            "scene",
            "--size",
            "256",
            "--seed",
            "7",
            "--batch",
            "2",
            "--prompt",
            "a dog",
            "--lora-steps",
            "5",
            "--steps",
            "9",
            "--sampler",
            "ddpm",
            "--candidates",
            "3",
        ]);
        let r = &a.model.run;
        assert_eq!((r.engine, r.size, r.seed, r.batch), (EngineKind::SceneModel, 256, 7, 2));
        assert_eq!((r.sd.prompt.as_str(), r.sd.lora_steps), ("a dog", Some(5)));
        let s = settings(&a.model, Some(&a.sampling), a.candidates, &Switches::default()).unwrap();
        assert_eq!((s.steps, s.sd.steps, s.sampler, s.score), (9, 9, SamplerKind::Ddpm, true));
        assert_eq!(s.sd.sampler, SamplerKind::Ddpm);
        // Without --steps and --sampler, each engine keeps its own defaults: the scene model
        // DDIM at 3 steps, Stable Diffusion DPM-Solver++ at 25 (diffusers' SD-2 inpainting).
        let s = settings(&fill_args(&[]).model, Some(&fill_args(&[]).sampling), 1, &Switches::default()).unwrap();
        assert_eq!((s.steps, s.sd.steps), (defaults::STEPS, 25));
        assert_eq!((s.sampler, s.sd.sampler), (SamplerKind::Ddim, SamplerKind::DpmSolver));
    }

    #[test]
    fn the_command_lines_jobs_carry_the_switches() {
        let sw = Switches {
            debug_parallax: true,
            memory_gib: Some(0.001),
            patch: serde_json::from_str(r#"{"window":2}"#).ok(),
            ..Default::default()
        };
        let s = settings(&fill_args(&[]).model, None, 1, &sw).unwrap();
        assert!(s.diagnostics.parallax);
        assert_eq!((s.memory_gib, s.patch.window), (Some(0.001), 2));
        // The scene's budget check is the job's: a thousandth of a GiB refuses the demo.
        let demo = crate::scene::demo::dir();
        let paths = ScenePaths {
            target: demo.join("target.png"),
            mask: Some(demo.join("mask.png")),
            extension: Extension::default(),
            refs: vec![],
        };
        let e = load_scene(&paths, None, s.memory_gib, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("REALFILL_MEMORY_GIB"), "{e}");
        assert!(load_scene(&paths, None, None, &mut |_| {}).is_ok());
    }
}
