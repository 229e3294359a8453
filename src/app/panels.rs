//! The panels around the canvas: menu and tools on top, references on the left, the run
//! panel on the right, candidates, messages and status at the bottom. Each gets the parts of
//! the app it draws; what the person asks for goes into `out` as `Command`s, carried out at the
//! end of the frame (settings edited in place are the exception: they are the panel's own).

use egui::{Color32, RichText};

use super::candidates::{Candidate, Candidates};
use super::canvas::Tool;
use super::clipboard;
use super::commands::{self, Command};
use super::dialogs::Dialog;
use super::document::{Document, extension_preset};
use super::frame_stats::FrameStats;
use super::jobs::{JobView, Running};
use super::messages::{Level, Messages};
use super::settings::AppSettings;
use super::view::{DocView, ThumbCache};
use crate::scene::Extension;
use crate::settings::{EngineKind, LIMITS, LoraPreset};

/// The menus and the tools. `results`: the last fill's candidates (the Sources switch needs
/// one on the canvas).
pub fn top_bar(
    ui: &mut egui::Ui,
    doc: Option<&Document>,
    settings: &mut AppSettings,
    view: &DocView,
    results: &Candidates,
    busy: bool,
    out: &mut Vec<Command>,
) {
    egui::Panel::top("top").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                let ctx = ui.ctx().clone();
                let item = |label: &str, keys: &egui::KeyboardShortcut| {
                    egui::Button::new(label.to_string()).shortcut_text(ctx.format_shortcut(keys))
                };
                if ui.add(item("Open photo…", &commands::OPEN)).clicked() {
                    out.push(Command::OpenDialog(Dialog::OpenPhoto));
                }
                let has_doc = doc.is_some();
                if ui.add_enabled(has_doc, egui::Button::new("Add references…")).clicked() {
                    out.push(Command::OpenDialog(Dialog::AddReferences));
                }
                ui.separator();
                if ui.add(item("Open project…", &commands::OPEN_PROJECT)).clicked() {
                    out.push(Command::OpenDialog(Dialog::OpenProject));
                }
                ui.add_enabled_ui(!settings.recent.is_empty(), |ui| {
                    ui.menu_button("Open recent", |ui| {
                        let recent = settings.recent.clone();
                        let name_of = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
                        for p in &recent {
                            let mut name = name_of(p).unwrap_or_default();
                            // Two files of one name (every camera's IMG_0001.JPG): say which folder.
                            if recent.iter().filter(|q| name_of(q) == name_of(p)).count() > 1
                                && let Some(dir) = p.parent().and_then(name_of)
                            {
                                name = format!("{name} — {dir}");
                            }
                            let p = p.clone();
                            if ui.button(name).on_hover_text(p.display().to_string()).clicked() {
                                out.push(Command::OpenRecent(p));
                            }
                        }
                    });
                });
                if ui.add_enabled(has_doc, item("Save project", &commands::SAVE)).clicked() {
                    out.push(Command::Save);
                }
                if ui.add_enabled(has_doc, item("Save project as…", &commands::SAVE_AS)).clicked() {
                    out.push(Command::OpenDialog(Dialog::SaveProject));
                }
                ui.separator();
                if ui.add_enabled(has_doc, item("Export…", &commands::EXPORT)).clicked() {
                    out.push(Command::OpenDialog(Dialog::Export));
                }
                ui.horizontal(|ui| {
                    let l = ui.label("JPEG quality");
                    ui.add(egui::DragValue::new(&mut settings.jpeg_quality).range(1..=100)).labelled_by(l.id);
                });
                if ui.add_enabled(has_doc, egui::Button::new("Import mask…")).clicked() {
                    out.push(Command::OpenDialog(Dialog::ImportMask));
                }
                if ui.add_enabled(has_doc, egui::Button::new("Export mask…")).clicked() {
                    out.push(Command::OpenDialog(Dialog::ExportMask));
                }
                ui.separator();
                if ui.add(item("Quit", &commands::QUIT)).clicked() {
                    out.push(Command::Quit);
                }
            });
            ui.menu_button("Edit", |ui| {
                let (u, r) = doc.map_or((false, false), |d| (d.can_undo(), d.can_redo()));
                let ctx = ui.ctx().clone();
                let undo = egui::Button::new("Undo").shortcut_text(ctx.format_shortcut(&commands::UNDO));
                if ui.add_enabled(u, undo).clicked() {
                    out.push(Command::Undo);
                }
                let redo = egui::Button::new("Redo").shortcut_text(ctx.format_shortcut(&commands::REDO));
                if ui.add_enabled(r, redo).clicked() {
                    out.push(Command::Redo);
                }
                ui.separator();
                let has_doc = doc.is_some();
                let copy = egui::Button::new("Copy image").shortcut_text(ctx.format_shortcut(&commands::COPY));
                if ui.add_enabled(has_doc, copy).clicked() {
                    out.push(Command::CopyImage);
                }
                let paste = egui::Button::new("Paste").shortcut_text(ctx.format_shortcut(&commands::PASTE));
                if ui.add(paste).on_hover_text("As a reference when a photo is open, else as the photo").clicked() {
                    out.push(Command::Paste(clipboard::PasteAs::Auto));
                }
                if ui.button("Paste as photo").clicked() {
                    out.push(Command::Paste(clipboard::PasteAs::Photo));
                }
                if ui.add_enabled(has_doc, egui::Button::new("Paste as reference")).clicked() {
                    out.push(Command::Paste(clipboard::PasteAs::Reference));
                }
            });
            ui.menu_button("Help", |ui| {
                let keys = ui.ctx().format_shortcut(&commands::SHORTCUTS);
                if ui.add(egui::Button::new("Keyboard shortcuts").shortcut_text(keys)).clicked() {
                    out.push(Command::ToggleShortcuts);
                }
            });
            ui.separator();
            // A narrow window wraps the tools onto a second row instead of cutting them off.
            ui.horizontal_wrapped(|ui| tools(ui, doc, settings, view, results, busy, out));
        });
    });
}

/// The keyboard shortcuts, from the one table that also handles them (F1, Help menu).
pub fn shortcut_list(ui: &mut egui::Ui, open: &mut bool) {
    egui::Window::new("Keyboard shortcuts").open(open).collapsible(false).resizable(false).show(ui.ctx(), |ui| {
        egui::Grid::new("shortcuts").num_columns(2).striped(true).show(ui, |ui| {
            let ctx = ui.ctx().clone();
            for s in commands::shortcuts() {
                ui.label(RichText::new(ctx.format_shortcut(&s.keys)).monospace());
                ui.label(s.what);
                ui.end_row();
            }
            for (keys, what) in [
                (&commands::COPY, "Copy the image"),
                (&commands::PASTE, "Paste an image: a reference, or the photo when none is open"),
            ] {
                ui.label(RichText::new(ctx.format_shortcut(keys)).monospace());
                ui.label(what);
                ui.end_row();
            }
            for (keys, what) in [
                ("[  ]", "Brush smaller / larger"),
                ("Space + drag", "Move the view"),
                ("Scroll", "Zoom about the pointer"),
                ("\\ (held)", "Show the photo before the last fill"),
            ] {
                ui.label(RichText::new(keys).monospace());
                ui.label(what);
                ui.end_row();
            }
        });
    });
}

fn tools(
    ui: &mut egui::Ui,
    doc: Option<&Document>,
    settings: &mut AppSettings,
    view: &DocView,
    results: &Candidates,
    busy: bool,
    out: &mut Vec<Command>,
) {
    let editable = doc.is_some() && !busy;
    let ctx = ui.ctx().clone();
    let key = |k: &egui::KeyboardShortcut| ctx.format_shortcut(k);
    ui.add_enabled_ui(editable, |ui| {
        let tool = view.canvas.tool;
        let brush = ui.selectable_label(tool == Some(Tool::Brush), "Brush");
        if brush.on_hover_text(format!("Paint what to replace ({})", key(&commands::BRUSH))).clicked() {
            out.push(Command::SetTool(Tool::Brush));
        }
        let eraser = ui.selectable_label(tool == Some(Tool::Eraser), "Eraser");
        if eraser.on_hover_text(format!("Unpaint ({})", key(&commands::ERASER))).clicked() {
            out.push(Command::SetTool(Tool::Eraser));
        }
        let rect = ui.selectable_label(tool == Some(Tool::Rectangle), "Rectangle");
        let tip = format!("Drag a rectangle to add to the mask; hold Alt to take away ({})", key(&commands::RECTANGLE));
        if rect.on_hover_text(tip).clicked() {
            out.push(Command::SetTool(Tool::Rectangle));
        }
        let lasso = ui.selectable_label(tool == Some(Tool::Lasso), "Lasso");
        let tip = format!("Draw an outline to add to the mask; hold Alt to take away ({})", key(&commands::LASSO));
        if lasso.on_hover_text(tip).clicked() {
            out.push(Command::SetTool(Tool::Lasso));
        }
        let l = ui.label("Size");
        ui.add(
            egui::DragValue::new(&mut settings.brush_radius)
                .range(1.0..=500.0)
                .speed(0.5)
                .fixed_decimals(0)
                .suffix(" px"),
        )
        .labelled_by(l.id)
        .on_hover_text("Brush radius in photo pixels ([ and ])");
        if doc.is_some() {
            let tip = format!("Fill what is kept, keep what is painted ({})", key(&commands::INVERT));
            if ui.button("Invert").on_hover_text(tip).clicked() {
                out.push(Command::InvertMask);
            }
            if ui.button("Clear").on_hover_text(format!("Remove the whole mask ({})", key(&commands::CLEAR))).clicked()
            {
                out.push(Command::ClearMask);
            }
            let step = settings.mask_step;
            if ui.button("Grow").on_hover_text(format!("Grow the mask by {step} px")).clicked() {
                out.push(Command::GrowMask(step));
            }
            if ui.button("Shrink").on_hover_text(format!("Shrink the mask by {step} px")).clicked() {
                out.push(Command::GrowMask(-step));
            }
            ui.add(egui::DragValue::new(&mut settings.mask_step).range(1.0..=200.0).speed(0.5).suffix(" px"))
                .on_hover_text("How far Grow and Shrink move the mask's edge");
        }
        ui.separator();
        let (u, r) = doc.map_or((false, false), |d| (d.can_undo(), d.can_redo()));
        if ui.add_enabled(u, egui::Button::new("Undo")).on_hover_text(key(&commands::UNDO)).clicked() {
            out.push(Command::Undo);
        }
        if ui.add_enabled(r, egui::Button::new("Redo")).on_hover_text(key(&commands::REDO)).clicked() {
            out.push(Command::Redo);
        }
    });
    ui.separator();
    if ui.button("Fit").on_hover_text(format!("Fit the canvas to the window ({})", key(&commands::FIT))).clicked() {
        out.push(Command::Fit);
    }
    let actual = format!("One photo pixel per screen pixel ({})", key(&commands::ACTUAL_PIXELS));
    if ui.button("100%").on_hover_text(actual).clicked() {
        out.push(Command::ActualPixels);
    }
    let can_compare = doc.is_some_and(|d| d.before_last_fill().is_some());
    if ui
        .add_enabled(can_compare, egui::Button::new("Before").selected(view.before_toggle))
        .on_hover_text("Show the photo before the last fill (or hold \\)")
        .clicked()
    {
        out.push(Command::ToggleBefore);
    }
    if ui
        .add_enabled(can_compare, egui::Button::new("Split").selected(view.split))
        .on_hover_text(format!("Before on the left of a line you drag, after on the right ({})", key(&commands::SPLIT)))
        .clicked()
    {
        out.push(Command::ToggleSplit);
    }
    let has_sources = can_compare && results.list.get(results.selected).is_some();
    if ui
        .add_enabled(has_sources, egui::Button::new("Sources").selected(view.source_tint))
        .on_hover_text(format!(
            "Tint the fill by where its pixels came from: each reference (and by which motion), or invented ({})",
            key(&commands::SOURCES)
        ))
        .clicked()
    {
        out.push(Command::ToggleSourceTint);
    }
}

/// References: thumbnails with remove, add button, canvas extension. Returns the panel's
/// rectangle (files dropped on it become references).
/// `set_aside`: how many references of the photo open before wait for the person's answer
/// (keep them, or a new scene).
pub fn references_panel(
    ui: &mut egui::Ui,
    doc: Option<&Document>,
    set_aside: Option<usize>,
    thumbs: &mut ThumbCache,
    busy: bool,
    out: &mut Vec<Command>,
) -> egui::Rect {
    egui::Panel::left("references")
        .resizable(true)
        .default_size(220.0)
        .show(ui, |ui| {
            ui.heading("References");
            let Some(doc) = doc else {
                ui.label("Open a photo first.");
                return;
            };
            if let Some(n) = set_aside.filter(|&n| n > 0) {
                // (Not "No references" under the question about keeping them.)
                let photos = if n == 1 { "reference photo" } else { "reference photos" };
                ui.label(RichText::new(format!("{n} {photos} of the last photo set aside: keep them or start a new scene.")).weak());
            } else if doc.refs.is_empty() {
                ui.label(
                    RichText::new("No references: the fill then learns only from the photo's own known pixels. Add other photos of the same scene.")
                        .color(Color32::from_rgb(230, 180, 80)),
                );
            }
            let mut remove = None;
            egui::ScrollArea::vertical().max_height(ui.available_height() * 0.55).show(ui, |ui| {
                for (i, r) in doc.refs.iter().enumerate() {
                    let name = r.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let tex = thumbs.get(ui.ctx(), r);
                    ui.horizontal(|ui| {
                        ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(tex.id(), tex.size_vec2())).max_size(egui::vec2(120.0, 90.0)));
                        ui.vertical(|ui| {
                            ui.label(&name).on_hover_text(r.path.display().to_string());
                            ui.label(format!("{}×{}", r.width(), r.height()));
                            if ui.small_button("Remove").on_hover_text(format!("Remove {name} from the references")).clicked() {
                                remove = Some(i);
                            }
                        });
                    });
                }
            });
            if let Some(i) = remove {
                out.push(Command::RemoveReference(i));
            }
            if ui.button("Add references…").clicked() {
                out.push(Command::OpenDialog(Dialog::AddReferences));
            }
            ui.label(RichText::new("or drop photos here").weak());
            ui.separator();
            extension_controls(ui, doc, busy, out);
        })
        .response
        .rect
}

fn extension_controls(ui: &mut egui::Ui, doc: &Document, busy: bool, out: &mut Vec<Command>) {
    ui.heading("Extend canvas");
    ui.label(RichText::new("Drag the canvas edges outward, or type pixels per side.").weak());
    let mut e = doc.extension;
    let mut changed = false;
    ui.add_enabled_ui(!busy, |ui| {
        egui::Grid::new("extension").num_columns(4).show(ui, |ui| {
            for (name, v) in
                [("Left", &mut e.left), ("Top", &mut e.top), ("Right", &mut e.right), ("Bottom", &mut e.bottom)]
            {
                let l = ui.label(name);
                changed |= ui.add(egui::DragValue::new(v).range(0..=20_000).speed(2.0)).labelled_by(l.id).changed();
                if name == "Top" {
                    ui.end_row();
                }
            }
            ui.end_row();
        });
        ui.horizontal(|ui| {
            let (w, h) = (doc.target.width(), doc.target.height());
            for (label, f) in [("1.25×", 1.25), ("1.5×", 1.5), ("2×", 2.0)] {
                if ui.button(label).on_hover_text(format!("Grow the canvas to {label} the photo")).clicked() {
                    e = extension_preset(w, h, f);
                    changed = true;
                }
            }
            if ui.button("None").clicked() {
                e = Extension::default();
                changed = true;
            }
        });
    });
    let (cw, ch) = doc.canvas_size();
    ui.label(format!("canvas {cw}×{ch}"));
    if changed {
        out.push(Command::SetExtension(e));
    }
}

/// The engine's settings, Learn, Fill and Cancel, and the running job's progress.
pub fn run_panel(
    ui: &mut egui::Ui,
    settings: &mut AppSettings,
    job: &JobView,
    has_fill_region: bool,
    out: &mut Vec<Command>,
) {
    egui::Panel::right("run").resizable(false).default_size(240.0).show(ui, |ui| {
        ui.heading("Run");
        let busy = job.busy();
        ui.add_enabled_ui(!busy, |ui| {
            let r = &mut settings.run;
            egui::Grid::new("run-settings").num_columns(2).show(ui, |ui| {
                let l = ui.label("Engine");
                let name = |e: EngineKind| match e {
                    EngineKind::Patch => "patch (seconds)",
                    e => e.label(),
                };
                let combo = egui::ComboBox::from_id_salt("engine").selected_text(name(r.engine)).show_ui(ui, |ui| {
                    ui.selectable_value(&mut r.engine, EngineKind::Auto, name(EngineKind::Auto))
                        .on_hover_text("The patch engine (measured as good or better, in seconds)");
                    ui.selectable_value(&mut r.engine, EngineKind::Patch, name(EngineKind::Patch))
                        .on_hover_text("Training-free: copies matching patches from the references, coarse to fine");
                    ui.selectable_value(&mut r.engine, EngineKind::SceneModel, name(EngineKind::SceneModel))
                        .on_hover_text("Learns this scene from the references (minutes the first time; cached after)");
                    ui.add_enabled_ui(r.sd.model.is_some(), |ui| {
                        ui.selectable_value(
                            &mut r.engine,
                            EngineKind::StableDiffusion,
                            name(EngineKind::StableDiffusion),
                        )
                        .on_hover_text(
                            "Stable Diffusion 2 inpainting from your model folder: imagines what no reference shows",
                        )
                        .on_disabled_hover_text("Choose a Stable Diffusion model folder below first");
                    });
                });
                combo.response.labelled_by(l.id);
                ui.end_row();
                let l = ui.label("Steps");
                if r.engine == EngineKind::StableDiffusion {
                    ui.add(egui::DragValue::new(&mut r.sd.steps).range(LIMITS.steps))
                        .labelled_by(l.id)
                        .on_hover_text("Denoising steps of Stable Diffusion (50 by default)");
                } else if r.engine.resolve() == EngineKind::SceneModel {
                    ui.add(egui::DragValue::new(&mut r.steps).range(LIMITS.steps))
                        .labelled_by(l.id)
                        .on_hover_text("Denoising steps of the scene model");
                } else {
                    // The patch engine's steps follow from the photo's size (coarse to fine);
                    // an editable field here would be ignored and contradict the progress.
                    ui.label(egui::RichText::new("by image size").weak())
                        .labelled_by(l.id)
                        .on_hover_text("The patch engine denoises coarse to fine: a few steps per level, more levels for larger photos");
                }
                ui.end_row();
                let l = ui.label("Seed");
                ui.horizontal(|ui| {
                    ui.add(egui::DragValue::new(&mut r.seed)).labelled_by(l.id);
                    if ui.button("Random").on_hover_text("New random seed").clicked() {
                        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                        let nanos = now.map(|d| d.as_nanos() as u64).unwrap_or(1);
                        r.seed = crate::rng::Rng::new(nanos).next_u64() % 1_000_000;
                    }
                });
                ui.end_row();
                let l = ui.label("Working size");
                egui::ComboBox::from_id_salt("size")
                    .selected_text(format!("{} px", r.size))
                    .show_ui(ui, |ui| {
                        for s in [256, 384, 512, 768] {
                            ui.selectable_value(&mut r.size, s, format!("{s} px"));
                        }
                    })
                    .response
                    .labelled_by(l.id);
                ui.end_row();
                let l = ui.label("Candidates");
                ui.add(egui::DragValue::new(&mut r.candidates).range(LIMITS.candidates))
                    .labelled_by(l.id)
                    .on_hover_text("Fills with successive seeds, ranked by agreement with the references");
                ui.end_row();
                // The scene model's; Stable Diffusion's learning is set in its own section.
                if r.engine != EngineKind::StableDiffusion {
                    let l = ui.label("Learning steps");
                    ui.add(egui::DragValue::new(&mut r.learn_steps).range(LIMITS.learn_steps).speed(10.0))
                        .labelled_by(l.id);
                    ui.end_row();
                }
            });
        });
        sd_settings(ui, settings, busy, out);
        gpu_server(ui, settings, job.server_lost.as_deref(), busy, out);
        ui.add_space(6.0);
        let can_run = has_fill_region && !busy;
        let sd = settings.run.engine == EngineKind::StableDiffusion;
        ui.horizontal(|ui| {
            if ui
                .add_enabled(can_run, egui::Button::new("Learn"))
                .on_hover_text(if sd {
                    "Learn this scene into Stable Diffusion (RealFill's LoRA; cached, and used by every \
                     Fill of this scene). Long on a CPU: see the preset below"
                } else {
                    "Learn the scene model now (Fill does this when needed)"
                })
                .on_disabled_hover_text("Paint a region or extend the canvas first")
                .clicked()
            {
                out.push(Command::Learn);
            }
            if ui
                .add_enabled(can_run, egui::Button::new(RichText::new("Fill").strong()))
                .on_hover_text(format!("Fill the painted region and any extended border ({})", ui.ctx().format_shortcut(&commands::FILL)))
                .on_disabled_hover_text("Paint a region or extend the canvas first")
                .clicked()
            {
                out.push(Command::Fill);
            }
            let esc = ui.ctx().format_shortcut(&commands::CANCEL);
            let cancel = egui::Button::new("Cancel");
            if ui.add_enabled(busy, cancel).on_hover_text(format!("Stop within one step ({esc})")).clicked() {
                out.push(Command::Cancel);
            }
        });
        progress(ui, job);
    });
}

/// The Stable Diffusion model folder (the person's download; nothing is fetched), prompt and
/// guidance.
fn sd_settings(ui: &mut egui::Ui, settings: &mut AppSettings, busy: bool, out: &mut Vec<Command>) {
    egui::CollapsingHeader::new("Stable Diffusion").default_open(settings.run.sd.model.is_some()).show(ui, |ui| {
        ui.add_enabled_ui(!busy, |ui| {
            // The folder's name (a full path does not fit the panel); the path on hover.
            match &settings.run.sd.model {
                Some(p) => {
                    let name = p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
                    ui.label(format!("Model: {name}")).on_hover_text(p.display().to_string());
                }
                None => {
                    ui.label("No model folder")
                        .on_hover_text("The diffusers folder of stabilityai/stable-diffusion-2-inpainting (README)");
                }
            }
            let mut choose = false;
            ui.horizontal(|ui| {
                choose = ui
                    .button("Model folder…")
                    .on_hover_text("Point at the diffusers folder you downloaded (unet/, vae/, text_encoder/, …)")
                    .clicked();
                if settings.run.sd.model.is_some() && ui.button("Forget").clicked() {
                    settings.run.sd.model = None;
                    if settings.run.engine == EngineKind::StableDiffusion {
                        settings.run.engine = EngineKind::Auto;
                    }
                }
            });
            if choose {
                out.push(Command::OpenDialog(Dialog::SdModel));
            }
            let r = &mut settings.run.sd;
            egui::Grid::new("sd-settings").num_columns(2).show(ui, |ui| {
                let l = ui.label("Prompt");
                ui.add(egui::TextEdit::singleline(&mut r.prompt).hint_text("(none)").desired_width(140.0))
                    .labelled_by(l.id)
                    .on_hover_text("What to paint; empty lets the photo decide");
                ui.end_row();
                let l = ui.label("Guidance");
                ui.add(egui::DragValue::new(&mut r.guidance).range(LIMITS.guidance).speed(0.1))
                    .labelled_by(l.id)
                    .on_hover_text("How strongly the prompt steers (1 = not at all, one pass per step)");
                ui.end_row();
                let l = ui.label("Learning");
                egui::ComboBox::from_id_salt("lora-preset")
                    .selected_text(match r.lora_preset {
                        LoraPreset::Quick => "quick",
                        LoraPreset::Quality => "quality",
                    })
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut r.lora_preset, LoraPreset::Quick, "quick")
                            .on_hover_text("200 steps of 4 examples");
                        ui.selectable_value(&mut r.lora_preset, LoraPreset::Quality, "quality")
                            .on_hover_text("The paper's 2,000 steps of 16 examples (an hour on a GPU)");
                    })
                    .response
                    .labelled_by(l.id);
                ui.end_row();
            });
        });
    });
}

/// A GPU server (`realfill serve` on another machine): address, token, and the switch between
/// it and this computer. The token field hides what is typed.
fn gpu_server(ui: &mut egui::Ui, settings: &mut AppSettings, lost: Option<&str>, busy: bool, out: &mut Vec<Command>) {
    let remote = settings.use_gpu_server;
    egui::CollapsingHeader::new("GPU server").default_open(remote).show(ui, |ui| {
        ui.add_enabled_ui(!busy, |ui| {
            let server = &mut settings.gpu_server;
            egui::Grid::new("gpu-server").num_columns(2).show(ui, |ui| {
                let l = ui.label("Address");
                ui.add(
                    egui::TextEdit::singleline(&mut server.url).hint_text("ws://127.0.0.1:7878").desired_width(140.0),
                )
                .labelled_by(l.id)
                .on_hover_text("What `realfill serve` printed on the GPU machine (through an SSH tunnel: 127.0.0.1)");
                ui.end_row();
                let l = ui.label("Token");
                ui.add(egui::TextEdit::singleline(&mut server.token).password(true).desired_width(140.0))
                    .labelled_by(l.id)
                    .on_hover_text("The token `realfill serve` printed");
                ui.end_row();
            });
            ui.horizontal(|ui| {
                let label = if remote { "Reconnect" } else { "Use the GPU server" };
                if ui.button(label).on_hover_text("Learning and filling compute there; the canvas stays here").clicked()
                {
                    out.push(Command::UseGpuServer);
                }
                if remote && ui.button("Use this computer").clicked() {
                    out.push(Command::UseThisComputer);
                }
            });
            if let Some(why) = lost {
                ui.label(egui::RichText::new(format!("Not available: {why}")).color(Color32::from_rgb(255, 110, 110)));
            }
        });
    });
}

fn progress(ui: &mut egui::Ui, job: &JobView) {
    let l = &job.learning;
    if job.running.is_some() && l.total > 0 && l.step < l.total {
        let frac = l.step as f32 / l.total as f32;
        let eta = if l.step > 0 { l.elapsed_s / l.step as f32 * (l.total - l.step) as f32 } else { 0.0 };
        ui.add(egui::ProgressBar::new(frac).text(format!("learning {}/{}", l.step, l.total)));
        // Below the bar, where it wraps: in the bar it was cut at the panel's edge ("about 5 min 48").
        if l.step > 0 {
            ui.label(format!("{} left", duration(eta)));
        }
    }
    if l.losses.len() > 1 {
        ui.label(format!("loss {:.4}", l.losses.last().copied().unwrap_or(0.0)));
        loss_plot(ui, &l.losses);
    }
    if let (Some(Running::Fill { remaining, .. }), Some(p)) = (&job.running, &job.preview) {
        let more = if *remaining > 0 { format!(" · {remaining} more candidates") } else { String::new() };
        let bar = match job.native_preview.last() {
            Some(n) => egui::ProgressBar::new(n.rows_done as f32 / n.rows.max(1) as f32)
                .text(format!("full-resolution detail {}/{} rows{more}", n.rows_done, n.rows)),
            None => egui::ProgressBar::new(p.step as f32 / p.total.max(1) as f32)
                .text(format!("denoising {}/{}{more}", p.step, p.total)),
        };
        ui.add(bar);
    }
}

fn candidate_label(c: &Candidate) -> String {
    match c.agreement {
        Some(a) => format!("seed {} · {a:.1} dB", c.seed),
        None => format!("seed {}", c.seed),
    }
}

/// A time still to wait, as words ("about 3 min 20 s"), never like a time of day.
fn duration(s: f32) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("about {s} s"),
        60..3600 => format!("about {} min {} s", s / 60, s % 60),
        _ => format!("about {} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Loss per learning step, log scale, drawn with the painter.
fn loss_plot(ui: &mut egui::Ui, losses: &[f32]) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(ui.available_width(), 90.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, Color32::from_gray(25));
    let logs: Vec<f32> = losses.iter().map(|l| l.max(1e-8).log10()).collect();
    let (lo, hi) = logs.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = (hi - lo).max(1e-3);
    let n = logs.len();
    // At most one point per horizontal pixel.
    let stride = (n as f32 / rect.width()).ceil().max(1.0) as usize;
    let points: Vec<egui::Pos2> = (0..n)
        .step_by(stride)
        .map(|i| {
            let x = rect.left() + rect.width() * i as f32 / (n - 1) as f32;
            let y = rect.bottom() - rect.height() * (logs[i] - lo) / span;
            egui::pos2(x, y)
        })
        .collect();
    painter.line(points, egui::Stroke::new(1.5, Color32::from_rgb(120, 200, 255)));
    // Axes in words: the loss at the top and bottom of the (log) scale, the steps below.
    let font = egui::FontId::proportional(10.0);
    let weak = Color32::from_gray(150);
    let at = |y: f32| format!("{:.3}", 10f32.powf(y));
    painter.text(rect.left_top() + egui::vec2(3.0, 2.0), egui::Align2::LEFT_TOP, at(hi), font.clone(), weak);
    painter.text(rect.left_bottom() + egui::vec2(3.0, -2.0), egui::Align2::LEFT_BOTTOM, at(lo), font.clone(), weak);
    painter.text(
        rect.right_bottom() + egui::vec2(-3.0, -2.0),
        egui::Align2::RIGHT_BOTTOM,
        format!("step {n}"),
        font,
        weak,
    );
}

/// Candidates, messages, the status line (the job's), frame times, the backend and the zoom.
pub fn bottom_bar(
    ui: &mut egui::Ui,
    results: &Candidates,
    messages: &Messages,
    job: &JobView,
    frame: &FrameStats,
    zoom: f32,
    out: &mut Vec<Command>,
) {
    egui::Panel::bottom("status").show(ui, |ui| {
        if !results.list.is_empty() {
            ui.horizontal(|ui| {
                ui.label("Candidates:");
                let mut pick = None;
                for (i, c) in results.list.iter().enumerate() {
                    let img =
                        egui::Image::from_texture(egui::load::SizedTexture::new(c.thumb.id(), c.thumb.size_vec2()))
                            .max_size(egui::vec2(96.0, 72.0));
                    let b = ui
                        .add(egui::Button::image_and_text(img, candidate_label(c)).selected(i == results.selected))
                        .on_hover_text("Show this candidate");
                    if b.clicked() {
                        pick = Some(i);
                    }
                }
                if let Some(i) = pick {
                    out.push(Command::PickCandidate(i));
                }
            });
            ui.separator();
        }
        let mut dismiss = None;
        let mut act = None;
        for (i, m) in messages.all().iter().enumerate().rev().take(3) {
            ui.horizontal(|ui| {
                let colour = match m.level {
                    Level::Info => ui.visuals().text_color(),
                    Level::Warning => Color32::from_rgb(230, 180, 80),
                    Level::Error => Color32::from_rgb(255, 110, 110),
                };
                if ui.small_button("×").on_hover_text("Dismiss").clicked() {
                    dismiss = Some(i);
                }
                ui.label(RichText::new(&m.text).color(colour));
                // (not while a job runs: it would start another)
                if let Some((label, command)) = &m.action
                    && ui.add_enabled(!job.busy(), egui::Button::new(label)).clicked()
                {
                    act = Some((i, command.clone()));
                }
            });
        }
        if let Some(i) = dismiss {
            out.push(Command::DismissMessage(i));
        }
        // A message's button does its thing once: the message goes with it.
        if let Some((i, command)) = act {
            out.push(Command::DismissMessage(i));
            out.push(command);
        }
        ui.horizontal(|ui| {
            ui.label(RichText::new(&job.status).weak());
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if let Some(times) = frame.label() {
                    ui.label(RichText::new(times).weak())
                        .on_hover_text("CPU time of the last frame: all of it, and the part spent building the UI");
                }
                if let Some(b) = &job.backend {
                    ui.label(RichText::new(b).weak());
                }
                ui.label(RichText::new(format!("zoom {:.0}%", zoom * 100.0)).weak());
            });
        });
    });
}
