// The painted mask over the photo (src/app/mask_overlay.rs): one R8Unorm texel per photo
// pixel, 0 or 1/255 as the document stores it (uploaded without conversion), in square tiles
// that are the layers of one array texture. Drawn as one triangle over the callback's
// viewport; every fragment finds its photo pixels from its own framebuffer position.

struct View {
    // Framebuffer position (physical pixels) of the mask's top-left corner.
    origin: vec2<f32>,
    // Mask pixels per physical pixel (1 at 100 %).
    step: f32,
    // Samples per axis across a physical pixel's footprint: 1 at 100 % and above (the pixel
    // under its centre: crisp), up to 4 zoomed out (a box filter, so the edge does not alias).
    taps: u32,
    // The tint, premultiplied, in the framebuffer's encoding (as egui's own shader writes it).
    tint: vec4<f32>,
    size: vec2<u32>,
    // Tiles per row, and their side.
    cols: u32,
    tile: u32,
}

@group(0) @binding(0) var<uniform> params: View;
@group(0) @binding(1) var tiles: texture_2d_array<f32>;

@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    // (-1, 1), (3, 1), (-1, -3): one triangle that covers the viewport.
    let uv = vec2<f32>(f32((i << 1u) & 2u), f32(i & 2u));
    return vec4<f32>(uv.x * 2.0 - 1.0, 1.0 - uv.y * 2.0, 0.0, 1.0);
}

fn painted(q: vec2<f32>) -> f32 {
    let p = floor(q);
    if p.x < 0.0 || p.y < 0.0 || p.x >= f32(params.size.x) || p.y >= f32(params.size.y) {
        return 0.0;
    }
    let u = vec2<u32>(p);
    let t = u / params.tile;
    let v = textureLoad(tiles, u % params.tile, t.y * params.cols + t.x, 0).r;
    return select(0.0, 1.0, v > 0.5 / 255.0);
}

@fragment
fn fs_main(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    // `pos` is the physical pixel's centre; its footprint on the mask starts half a pixel back.
    let corner = (pos.xy - 0.5 - params.origin) * params.step;
    let n = max(params.taps, 1u);
    let d = params.step / f32(n);
    var sum = 0.0;
    for (var j = 0u; j < n; j++) {
        for (var i = 0u; i < n; i++) {
            sum += painted(corner + (vec2<f32>(f32(i), f32(j)) + 0.5) * d);
        }
    }
    let cover = sum / f32(n * n);
    if cover <= 0.0 {
        discard;
    }
    return params.tint * cover;
}
