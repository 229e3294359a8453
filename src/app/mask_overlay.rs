//! The painted mask over the photo as GPU textures, tinted by `shaders/mask_overlay.wgsl` in
//! egui_wgpu's paint callback (when the app renders with wgpu; the canvas keeps a CPU overlay
//! otherwise).
//!
//! One texel per photo pixel at any photo size, so the edge is the brush's own at 100 %: the
//! mask is R8Unorm square tiles, the layers of one array texture (one bind group, and a tap
//! across a tile seam reads the neighbour tile, so zoomed out there is no seam). The document's
//! bytes (0 or 1) go up as they are, a stroke's rectangle only (`queue.write_texture` with the
//! mask's own row pitch: no copy on the UI thread), and a new texture starts cleared, so an
//! empty mask costs no upload at all.

use eframe::egui_wgpu::{self, wgpu};
use egui::{Color32, Pos2, Rect};

use super::document::{PaintMask, PixelRect};

/// The smallest tile side: within every adapter's limit (2048 is wgpu's downlevel minimum), a
/// small stroke touches one or two tiles. Doubled while a photo's tiles outnumber the
/// adapter's array layers.
const MIN_TILE: u32 = 1024;
/// Samples per axis zoomed out, at most (a box filter over each screen pixel's footprint).
const MAX_TAPS: u32 = 4;
/// Bytes of `View` in the shader.
const UNIFORM_BYTES: usize = 48;

/// The pipeline, made once per renderer and kept in egui_wgpu's callback resources.
struct Pipeline {
    pipeline: wgpu::RenderPipeline,
}

pub struct MaskOverlay {
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    limits: wgpu::Limits,
    /// The tint, premultiplied, in the framebuffer's encoding.
    tint: [f32; 4],
    textures: Option<Textures>,
    /// The textures hold no painted pixel (a mask cleared after a fill needs no upload).
    cleared: bool,
    bytes_written: u64,
}

/// The mask's tiles on the GPU, for a mask of `width` × `height`.
struct Textures {
    width: u32,
    height: u32,
    tile: u32,
    cols: u32,
    texture: wgpu::Texture,
    uniforms: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

impl MaskOverlay {
    /// The overlay for egui_wgpu's renderer `rs`, tinted `tint` (as egui would draw it).
    pub fn new(rs: &egui_wgpu::RenderState, tint: Color32) -> MaskOverlay {
        let device = rs.device.clone();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mask overlay"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: wgpu::BufferSize::new(UNIFORM_BYTES as u64),
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: false },
                        view_dimension: wgpu::TextureViewDimension::D2Array,
                        multisampled: false,
                    },
                    count: None,
                },
            ],
        });
        let mut renderer = rs.renderer.write();
        if !renderer.callback_resources.contains::<Pipeline>() {
            let pipeline = pipeline(&device, &layout, rs.target_format);
            renderer.callback_resources.insert(Pipeline { pipeline });
        }
        MaskOverlay {
            device,
            queue: rs.queue.clone(),
            limits: rs.device.limits(),
            layout,
            tint: framebuffer_tint(tint, rs.target_format.is_srgb()),
            textures: None,
            cleared: true,
            bytes_written: 0,
        }
    }

    /// Whether the adapter can hold a `width` × `height` mask.
    pub fn fits(&self, width: usize, height: usize) -> bool {
        tile_side(&self.limits, width, height).is_some()
    }

    /// Show `mask`: only `changed` written when the textures already show the rest of it,
    /// else all of it.
    pub fn update(&mut self, mask: &PaintMask, changed: Option<PixelRect>) {
        let (w, h) = (mask.width as u32, mask.height as u32);
        let same_size = self.textures.as_ref().is_some_and(|t| (t.width, t.height) == (w, h));
        let all = PixelRect { x0: 0, y0: 0, x1: mask.width, y1: mask.height };
        let rect = match changed {
            Some(r) if same_size => r,
            _ => {
                if !same_size {
                    // New textures start cleared.
                    self.textures = self.make_textures(w, h);
                    self.cleared = true;
                }
                if self.cleared && mask.is_empty() {
                    return;
                }
                all
            }
        };
        self.write(mask, rect);
        // The textures now show the mask.
        self.cleared = mask.is_empty();
    }

    /// Bytes written to the GPU so far (a stroke's cost, for tests).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The callback that draws the mask over `rect` (screen points, within the painter's
    /// clip), its top-left corner at `origin` with `zoom` points per mask pixel.
    pub fn callback(&self, rect: Rect, origin: Pos2, zoom: f32) -> Option<egui::PaintCallback> {
        let t = self.textures.as_ref()?;
        let draw = Draw {
            bind_group: t.bind_group.clone(),
            uniforms: t.uniforms.clone(),
            origin,
            zoom,
            tint: self.tint,
            size: [t.width, t.height],
            cols: t.cols,
            tile: t.tile,
        };
        Some(egui_wgpu::Callback::new_paint_callback(rect, draw))
    }

    fn make_textures(&self, width: u32, height: u32) -> Option<Textures> {
        let tile = tile_side(&self.limits, width as usize, height as usize)?;
        let (cols, rows) = (width.div_ceil(tile).max(1), height.div_ceil(tile).max(1));
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("mask overlay tiles"),
            size: wgpu::Extent3d { width: tile, height: tile, depth_or_array_layers: cols * rows },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::R8Unorm,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        // An array view even for one layer (the default view of one layer is a plain 2D one).
        let view = texture.create_view(&wgpu::TextureViewDescriptor {
            dimension: Some(wgpu::TextureViewDimension::D2Array),
            ..Default::default()
        });
        let uniforms = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mask overlay view"),
            size: UNIFORM_BYTES as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mask overlay"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: uniforms.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&view) },
            ],
        });
        Some(Textures { width, height, tile, cols, texture, uniforms, bind_group })
    }

    /// Write the mask's pixels in `rect` (clamped to the mask), tile by tile.
    fn write(&mut self, mask: &PaintMask, rect: PixelRect) {
        let Some(t) = &self.textures else { return };
        let (x1, y1) = (rect.x1.min(mask.width), rect.y1.min(mask.height));
        let tile = t.tile as usize;
        let data = mask.data();
        for ty in rect.y0 / tile..y1.div_ceil(tile) {
            for tx in rect.x0 / tile..x1.div_ceil(tile) {
                let (ax, ay) = (rect.x0.max(tx * tile), rect.y0.max(ty * tile));
                let (bx, by) = (x1.min((tx + 1) * tile), y1.min((ty + 1) * tile));
                if ax >= bx || ay >= by {
                    continue;
                }
                let layer = (ty * t.cols as usize + tx) as u32;
                self.queue.write_texture(
                    wgpu::TexelCopyTextureInfo {
                        texture: &t.texture,
                        mip_level: 0,
                        origin: wgpu::Origin3d { x: (ax - tx * tile) as u32, y: (ay - ty * tile) as u32, z: layer },
                        aspect: wgpu::TextureAspect::All,
                    },
                    // The mask's own rows: write_texture needs no aligned pitch.
                    &data[ay * mask.width + ax..],
                    wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(mask.width as u32),
                        rows_per_image: None,
                    },
                    wgpu::Extent3d { width: (bx - ax) as u32, height: (by - ay) as u32, depth_or_array_layers: 1 },
                );
                self.bytes_written += ((bx - ax) * (by - ay)) as u64;
            }
        }
    }
}

/// The tile side for a `width` × `height` mask on an adapter with `limits`, or None when it
/// cannot hold one.
fn tile_side(limits: &wgpu::Limits, width: usize, height: usize) -> Option<u32> {
    let mut tile = MIN_TILE.min(limits.max_texture_dimension_2d);
    loop {
        let t = tile as usize;
        let layers = width.div_ceil(t).max(1) * height.div_ceil(t).max(1);
        if layers <= limits.max_texture_array_layers as usize {
            return Some(tile);
        }
        if tile * 2 > limits.max_texture_dimension_2d {
            return None;
        }
        tile *= 2;
    }
}

/// `tint` as egui's shader writes it: premultiplied gamma, made linear for an sRGB framebuffer.
fn framebuffer_tint(tint: Color32, srgb: bool) -> [f32; 4] {
    let [r, g, b, a] = tint.to_array();
    let c = |v: u8| if srgb { egui::ecolor::linear_f32_from_gamma_u8(v) } else { f32::from(v) / 255.0 };
    [c(r), c(g), c(b), f32::from(a) / 255.0]
}

fn pipeline(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    format: wgpu::TextureFormat,
) -> wgpu::RenderPipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("mask overlay"),
        source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/mask_overlay.wgsl").into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("mask overlay"),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("mask overlay"),
        layout: Some(&pipeline_layout),
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs_main"),
            buffers: &[],
            compilation_options: Default::default(),
        },
        primitive: wgpu::PrimitiveState::default(),
        // egui's pass as eframe sets it up by default, which the app keeps (`app::run`): no
        // depth buffer, no multisampling.
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs_main"),
            targets: &[Some(wgpu::ColorTargetState {
                format,
                // egui's own blending (premultiplied alpha).
                blend: Some(wgpu::BlendState {
                    color: wgpu::BlendComponent {
                        src_factor: wgpu::BlendFactor::One,
                        dst_factor: wgpu::BlendFactor::OneMinusSrcAlpha,
                        operation: wgpu::BlendOperation::Add,
                    },
                    alpha: wgpu::BlendComponent {
                        src_factor: wgpu::BlendFactor::OneMinusDstAlpha,
                        dst_factor: wgpu::BlendFactor::One,
                        operation: wgpu::BlendOperation::Add,
                    },
                }),
                write_mask: wgpu::ColorWrites::ALL,
            })],
            compilation_options: Default::default(),
        }),
        multiview_mask: None,
        cache: None,
    })
}

/// One frame's draw of the mask: the view goes into the uniforms in `prepare` (where the
/// pixels per point are known). A canvas draws its mask once per frame, so one buffer serves.
struct Draw {
    bind_group: wgpu::BindGroup,
    uniforms: wgpu::Buffer,
    origin: Pos2,
    zoom: f32,
    tint: [f32; 4],
    size: [u32; 2],
    cols: u32,
    tile: u32,
}

impl Draw {
    /// `View` of the shader, for `ppp` pixels per point.
    fn uniforms(&self, ppp: f32) -> [u8; UNIFORM_BYTES] {
        let step = 1.0 / (self.zoom * ppp).max(1e-6);
        // Within a rounding error of 100 % is 100 %: one tap, the pixel under the centre.
        let taps = ((step - 1e-3).ceil().max(1.0) as u32).min(MAX_TAPS);
        let words: [[u8; 4]; 12] = [
            (self.origin.x * ppp).to_ne_bytes(),
            (self.origin.y * ppp).to_ne_bytes(),
            step.to_ne_bytes(),
            taps.to_ne_bytes(),
            self.tint[0].to_ne_bytes(),
            self.tint[1].to_ne_bytes(),
            self.tint[2].to_ne_bytes(),
            self.tint[3].to_ne_bytes(),
            self.size[0].to_ne_bytes(),
            self.size[1].to_ne_bytes(),
            self.cols.to_ne_bytes(),
            self.tile.to_ne_bytes(),
        ];
        let mut out = [0u8; UNIFORM_BYTES];
        for (o, w) in out.chunks_exact_mut(4).zip(words) {
            o.copy_from_slice(&w);
        }
        out
    }
}

impl egui_wgpu::CallbackTrait for Draw {
    fn prepare(
        &self,
        _device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        _resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        queue.write_buffer(&self.uniforms, 0, &self.uniforms(screen.pixels_per_point));
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(p) = resources.get::<Pipeline>() else { return };
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.draw(0..3, 0..1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_adapter_or_the_mask_is_refused() {
        let limits = wgpu::Limits::downlevel_defaults();
        assert_eq!(tile_side(&limits, 3000, 2000), Some(1024));
        // 48 MP: 8 × 6 layers of 1024.
        assert_eq!(tile_side(&limits, 8000, 6000), Some(1024));
        // More tiles than layers: larger tiles.
        let few = wgpu::Limits { max_texture_array_layers: 16, ..limits.clone() };
        assert_eq!(tile_side(&few, 8000, 6000), Some(2048));
        assert_eq!(tile_side(&few, 20_000, 20_000), None, "beyond 2048-px tiles × 16 layers");
    }

    /// A 48 MP photo's stroke writes its own rectangle, not the mask; a fresh empty mask writes
    /// nothing; a change the overlay cannot take in part (undo, a fill) writes the whole mask.
    #[test]
    fn a_stroke_on_a_48_mp_mask_uploads_only_its_rectangle() {
        let rs = egui_kittest::wgpu::create_render_state(
            egui_kittest::wgpu::default_wgpu_setup(),
            egui_wgpu::RendererOptions::PREDICTABLE,
        );
        let mut overlay = MaskOverlay::new(&rs, Color32::RED);
        let mut mask = PaintMask::new(8000, 6000);
        overlay.update(&mask, None);
        assert_eq!(overlay.bytes_written(), 0, "a new texture is already clear");
        // Across the corner of four tiles.
        let r = mask.stroke([1020.0, 1020.0], [1030.0, 1026.0], 12.0, true).expect("on the mask");
        overlay.update(&mask, Some(r));
        let area = ((r.x1 - r.x0) * (r.y1 - r.y0)) as u64;
        assert_eq!(overlay.bytes_written(), area);
        assert!(area < 40 * 40, "{area}");
        overlay.update(&mask, None);
        assert_eq!(overlay.bytes_written(), area + 8000 * 6000);
        rs.device.poll(wgpu::PollType::wait_indefinitely()).expect("the writes are valid");
    }
}
