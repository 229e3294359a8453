"""diffusers' own speed on this CPU for the figures realfill's `bench --sd-model` prints: the
UNet step at 512² (batch 1 and the guided pair), VAE encode/decode, with the FLOPs PyTorch
counts for each (torch.utils.flop_counter). Same thread count as realfill.
Usage (venv of bench/diffusers_reference.sh): python bench/diffusers_timing.py DIR [--threads 2]"""
import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel


def timed(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def flops(fn):
    with FlopCounterMode(display=False) as m:
        fn()
    return m.get_total_flops() / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    kw = dict(variant="fp16", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(a.dir, subfolder="unet", **kw).eval()
    vae = AutoencoderKL.from_pretrained(a.dir, subfolder="vae", **kw).eval()
    try:
        text = CLIPTextModel.from_pretrained(a.dir, subfolder="text_encoder", **kw).eval()
    except ValueError as e:  # transformers 5.25 without its optional `kernels` package
        print(f"text encoder not loaded ({e}); the UNet gets a random context of its width")
        text = None
    lat = a.size // 8
    ids = torch.zeros(2, 77, dtype=torch.long)
    img = torch.randn(1, 3, a.size, a.size)
    z = torch.randn(1, 4, lat, lat)
    x1 = torch.randn(1, 9, lat, lat)
    with torch.no_grad():
        width = unet.config.cross_attention_dim
        ctx = text(ids).last_hidden_state if text is not None else torch.randn(2, 77, width)
        rows = [("text encoder, 2 prompts", lambda: text(ids))] if text is not None else []
        rows += [
            (f"VAE encode {a.size}²", lambda: vae.encode(img).latent_dist.mean),
            (f"VAE decode {a.size}²", lambda: vae.decode(z).sample),
            (f"UNet step {a.size}², batch 1", lambda: unet(x1, 500, encoder_hidden_states=ctx[:1]).sample),
            (f"UNet step {a.size}², guided pair", lambda: unet(torch.cat([x1, x1]), 500, encoder_hidden_states=ctx).sample),
        ]
        print(f"PyTorch {torch.__version__}, {a.threads} threads")
        for name, fn in rows:
            g = flops(fn)
            s = timed(fn, a.repeats)
            print(f"{name:<34} {s * 1e3:>10.1f} ms  {g:>8.1f} GFLOP  {g / s:>7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
