//! Property tests (proptest) of what parses user files and what does arithmetic on masks and
//! canvas extensions: nothing panics on any input, and what is written reads back the same.
//! Case counts are set per block (`CASES`); `PROPTEST_CASES` overrides them for longer runs.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use realfill::app::document::{PaintMask, extension_preset};
use realfill::scene::project::{Project, RleMask, RunSettings};
use realfill::scene::{Extension, Mask};

const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(CASES),
        ..ProptestConfig::default()
    }
}

fn valid_project_text() -> String {
    r#"{"format":"realfill-project","version":1,"target":"t.png","references":["a.png","b/c.png"],
        "extension":{"left":1,"top":2,"right":3,"bottom":4},
        "mask":{"width":3,"height":2,"runs":[1,2,3]},
        "settings":{"size":384,"steps":3,"seed":5,"candidates":2,"learn_steps":600,"engine":"Patch"}}"#
        .to_string()
}

fn arb_mask() -> impl Strategy<Value = (usize, usize, Vec<bool>)> {
    (1usize..40, 1usize..40).prop_flat_map(|(w, h)| (Just(w), Just(h), proptest::collection::vec(any::<bool>(), w * h)))
}

proptest! {
    #![proptest_config(config())]

    /// Any text at all: an error or a project, never a panic.
    #[test]
    fn project_parser_survives_any_text(text in ".{0,400}") {
        let _ = Project::parse(&text, Path::new("p.realfill"));
    }

    /// A valid project with bytes flipped, cut or spliced: an error that names the file, or a
    /// project whose mask is consistent.
    #[test]
    fn project_parser_survives_damaged_files(cut in 0usize..400, at in 0usize..400, byte in any::<u8>()) {
        let mut bytes = valid_project_text().into_bytes();
        if at < bytes.len() {
            bytes[at] = byte;
        }
        bytes.truncate(cut.max(1).min(bytes.len()));
        let text = String::from_utf8_lossy(&bytes);
        match Project::parse(&text, Path::new("dir/p.realfill")) {
            Ok(p) => {
                if let Some(m) = &p.mask {
                    prop_assert_eq!(m.decode().unwrap().len(), m.width * m.height);
                }
                prop_assert!(realfill::settings::LIMITS.candidates.contains(&p.settings.candidates));
                p.settings.validate().unwrap();
            }
            Err(e) => prop_assert!(e.to_string().starts_with("dir/p.realfill: "), "{}", e),
        }
    }

    /// Whatever a project holds, writing and reading it gives it back.
    #[test]
    fn projects_round_trip((w, h, bits) in arb_mask(), l in 0usize..500, t in 0usize..500, seed in any::<u64>(), n in 0usize..4) {
        let p = Project {
            target: PathBuf::from("/photos/target image.jpg"),
            references: (0..n).map(|i| PathBuf::from(format!("/photos/ref {i}.png"))).collect(),
            extension: Extension { left: l, top: t, right: t, bottom: l },
            mask: Some(RleMask::encode(w, h, bits)),
            settings: RunSettings { seed, ..Default::default() },
        };
        let path = Path::new("/projects/p.realfill");
        prop_assert_eq!(Project::parse(&p.to_text(path), path).unwrap(), p);
    }

    /// Run-length encoding is lossless and starts with a keep run.
    #[test]
    fn rle_round_trips((w, h, bits) in arb_mask()) {
        let r = RleMask::encode(w, h, bits.clone());
        prop_assert_eq!(r.decode().unwrap(), bits.clone());
        prop_assert_eq!(r.runs.iter().sum::<u64>() as usize, w * h);
        prop_assert!(r.runs.iter().skip(1).all(|&n| n > 0), "only the first run may be empty");
        let m = Mask { width: w, height: h, data: bits.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect() };
        prop_assert_eq!(RleMask::from_mask(&m), r);
    }

    /// Runs from a hand-edited file: decoded exactly, or refused; never a panic or an
    /// allocation beyond the image.
    #[test]
    fn rle_decode_survives_any_runs(w in 0usize..50, h in 0usize..50, runs in proptest::collection::vec(any::<u64>(), 0..12)) {
        let r = RleMask { width: w, height: h, runs };
        if let Ok(bits) = r.decode() {
            prop_assert_eq!(bits.len(), w * h);
        }
    }

    /// `--extend` parses exactly the four numbers it was given, and refuses anything else.
    #[test]
    fn extension_parse_round_trips(l in 0usize..20_001, t in 0usize..20_001, r in 0usize..20_001, b in 0usize..20_001) {
        let e = Extension::parse(&format!("{l}, {t},{r} ,{b}")).unwrap();
        prop_assert_eq!(e, Extension { left: l, top: t, right: r, bottom: b });
        prop_assert_eq!(e.canvas(100, 50), (100 + l + r, 50 + t + b));
    }

    #[test]
    fn extension_parse_survives_any_text(text in ".{0,60}") {
        if let Ok(e) = Extension::parse(&text) {
            prop_assert!(e.left <= 20_000 && e.top <= 20_000 && e.right <= 20_000 && e.bottom <= 20_000);
        }
    }

    /// A scene's fill region is the mask placed at the extension's offset plus the whole
    /// new border.
    #[test]
    fn scene_fill_region_is_mask_plus_border((w, h, bits) in arb_mask(), l in 0usize..6, t in 0usize..6, r in 0usize..6, b in 0usize..6) {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::new(w as u32, h as u32));
        let photo = realfill::scene::Photo::from_image(PathBuf::from("t.png"), img, None);
        let mask = Mask { width: w, height: h, data: bits.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect() };
        let ext = Extension { left: l, top: t, right: r, bottom: b };
        match realfill::scene::Scene::new(photo, Some((mask, Path::new("m.png"))), ext, vec![]) {
            Ok(s) => {
                let (cw, ch) = s.canvas_size();
                prop_assert_eq!((cw, ch), (w + l + r, h + t + b));
                for y in 0..ch {
                    for x in 0..cw {
                        let inside = x >= l && y >= t && x < l + w && y < t + h;
                        let want = if inside { bits[(y - t) * w + (x - l)] } else { true };
                        prop_assert_eq!(s.mask.get(x, y) >= 0.5, want);
                    }
                }
            }
            // Only when there is nothing to fill at all.
            Err(e) => {
                prop_assert!(ext.is_zero() && bits.iter().all(|&x| !x), "{}", e);
            }
        }
    }

    /// Presets grow the canvas to the factor (within a pixel), split between opposite sides.
    #[test]
    fn presets_reach_the_factor(w in 1usize..5000, h in 1usize..5000, f in 1.0f32..3.0) {
        let e = extension_preset(w, h, f);
        let (cw, ch) = e.canvas(w, h);
        prop_assert!((cw as f32 - w as f32 * f).abs() <= 1.0 && (ch as f32 - h as f32 * f).abs() <= 1.0);
        prop_assert!(e.left.abs_diff(e.right) <= 1 && e.top.abs_diff(e.bottom) <= 1);
    }

    /// Brush strokes anywhere (off the image, huge, tiny, non-finite): no panic; every pixel
    /// that changed lies in the returned rectangle, and nothing changes when None comes back.
    #[test]
    fn strokes_change_only_their_rectangle(
        (w, h) in (1usize..60, 1usize..60),
        a in proptest::array::uniform2(-100.0f32..200.0),
        b in proptest::array::uniform2(-100.0f32..200.0),
        radius in prop_oneof![0.0f32..80.0, Just(f32::NAN), Just(f32::INFINITY)],
        fill in any::<bool>(),
    ) {
        let mut m = PaintMask::new(w, h);
        if !fill {
            m.invert();
        }
        let before = m.clone();
        let rect = m.stroke(a, b, radius, fill);
        for y in 0..h {
            for x in 0..w {
                if m.get(x, y) != before.get(x, y) {
                    let r = rect.expect("a change comes with a rectangle");
                    prop_assert!(x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1);
                }
            }
        }
        // And the painted mask survives its own encoding.
        prop_assert_eq!(PaintMask::from_rle(&m.rle()).unwrap(), m);
    }
}

// --- crafted numbers in project files and model configs (issue 32) ---

/// A number a crafted file might hold: small, at a limit's edge, or anything at all.
fn arb_count() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..70, Just(1 << 16), Just(120_000_000), Just(1 << 31), Just(1 << 62), any::<u64>()]
}

fn arb_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        -2.0f64..2.0,
        Just(0.0),
        Just(-1.0),
        Just(1e300),
        any::<f64>().prop_filter("JSON has no NaN", |v| v.is_finite())
    ]
}

fn config_cases() -> ProptestConfig {
    ProptestConfig { cases: config().cases.min(2_000), ..config() }
}

/// Writes `v` as the config file of one case (a file per thread of the test binary).
fn config_file(v: &serde_json::Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("realfill-prop-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{:?}.json", std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

proptest! {
    #![proptest_config(config_cases())]

    /// A project whose sizes, counts and run lengths are anything: refused naming the file,
    /// or parsed within the limits; never an abort (the test process would die) or a panic.
    #[test]
    fn project_numbers_are_checked_before_allocating(
        w in arb_count(), h in arb_count(),
        runs in proptest::collection::vec(arb_count(), 0..8),
        refs in prop_oneof![0usize..4, 95usize..110, Just(6000)],
        side in arb_count(),
    ) {
        let refs = vec!["\"r.png\""; refs].join(",");
        let text = format!(
            r#"{{"format":"realfill-project","version":1,"target":"t.png","references":[{refs}],
                "extension":{{"left":{side},"top":0,"right":0,"bottom":0}},
                "mask":{{"width":{w},"height":{h},"runs":{runs:?}}}}}"#
        );
        match Project::parse(&text, Path::new("p.realfill")) {
            Ok(p) => {
                let m = p.mask.unwrap();
                prop_assert!((m.width * m.height) as u64 <= realfill::scene::io::MAX_PIXELS);
                prop_assert!(p.references.len() <= realfill::settings::MAX_REFERENCES);
                prop_assert!(p.extension.left <= Extension::MAX_SIDE);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("p.realfill: "), "{}", e),
        }
    }

    /// A UNet, VAE and text encoder config with every number anything: refused naming the
    /// file, or read with every number inside what realfill builds; never a panic.
    #[test]
    fn model_config_numbers_are_checked(
        blocks in 0usize..10, channels in arb_count(), groups in arb_count(), heads in arb_count(),
        layers in arb_count(), sample in arb_count(), kernel in arb_count(), eps in arb_float(),
        hidden in arb_count(), positions in arb_count(),
    ) {
        use realfill::diffusion::sd::config::{UNetConfig, VaeConfig, TextConfig, bounds};
        let unet = serde_json::json!({
            "block_out_channels": vec![channels; blocks],
            "down_block_types": vec!["CrossAttnDownBlock2D"; blocks],
            "up_block_types": vec!["CrossAttnUpBlock2D"; blocks],
            "layers_per_block": layers, "attention_head_dim": heads, "cross_attention_dim": hidden,
            "norm_num_groups": groups, "sample_size": sample, "conv_in_kernel": kernel, "norm_eps": eps,
        });
        let p = config_file(&unet);
        match UNetConfig::read(&p) {
            Ok(c) => {
                prop_assert!(bounds::SAMPLE_SIZE.contains(&c.sample_size.unwrap()));
                for lv in c.levels().unwrap() {
                    prop_assert!(bounds::WIDTH.contains(&lv.channels) && lv.channels % c.norm_num_groups == 0);
                    prop_assert!(lv.channels % lv.heads == 0 && bounds::LAYERS.contains(&lv.layers));
                }
                prop_assert!(c.stride() >= 1);
            }
            Err(e) => prop_assert!(e.to_string().contains(&*p.to_string_lossy()), "{}", e),
        }
        let vae = serde_json::json!({
            "block_out_channels": vec![channels; blocks],
            "down_block_types": vec!["DownEncoderBlock2D"; blocks],
            "up_block_types": vec!["UpDecoderBlock2D"; blocks],
            "layers_per_block": layers, "norm_num_groups": groups, "latent_channels": kernel, "scaling_factor": eps,
        });
        let p = config_file(&vae);
        match VaeConfig::read(&p) {
            Ok(c) => prop_assert!(c.factor() >= 1 && c.block_out_channels.iter().all(|ch| ch % c.norm_num_groups == 0)),
            Err(e) => prop_assert!(e.to_string().contains(&*p.to_string_lossy()), "{}", e),
        }
        let text = serde_json::json!({
            "vocab_size": channels, "hidden_size": hidden, "intermediate_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": positions, "layer_norm_eps": eps,
        });
        let p = config_file(&text);
        match TextConfig::read(&p) {
            Ok(c) => prop_assert!(c.num_attention_heads >= 1 && bounds::POSITIONS.contains(&c.max_position_embeddings)),
            Err(e) => prop_assert!(e.to_string().contains(&*p.to_string_lossy()), "{}", e),
        }
    }

    /// A noise schedule with any timesteps, betas, offsets and clipping range: refused, or a
    /// schedule whose ᾱ fall from 1 towards 0 and whose steps run; never a panic or an abort.
    #[test]
    fn scheduler_numbers_are_checked(
        t in arb_count(), start in arb_float(), end in arb_float(), offset in arb_count(), range in arb_float(),
        schedule in prop_oneof![Just("linear"), Just("scaled_linear"), Just("squaredcos_cap_v2")],
        trained in proptest::option::of(proptest::collection::vec(arb_float(), 0..6)),
    ) {
        use realfill::diffusion::sd::scheduler::{Scheduler, SchedulerConfig};
        let c: SchedulerConfig = serde_json::from_value(serde_json::json!({
            "_class_name": "DDIMScheduler", "num_train_timesteps": t, "beta_start": start, "beta_end": end,
            "beta_schedule": schedule, "steps_offset": offset, "clip_sample": true, "clip_sample_range": range,
            "trained_betas": trained,
        })).unwrap();
        if let Ok(s) = Scheduler::new(c) {
            prop_assert!(s.alphas_cumprod.iter().all(|a| (0.0..=1.0).contains(a)));
            let steps = s.timesteps(3);
            let x = [0.5f32, -0.5];
            for sampler in [realfill::settings::SamplerKind::Ddim, realfill::settings::SamplerKind::Ddpm] {
                let (next, _) = s.step(sampler, &x, &x, steps[0], 3, &mut realfill::rng::Rng::new(0));
                prop_assert_eq!(next.len(), 2);
            }
        }
    }
}
