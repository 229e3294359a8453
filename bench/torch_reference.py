#!/usr/bin/env python3
"""The scene model in PyTorch: the same network and learning step as realfill's
(src/diffusion/unet.rs, src/diffusion/train.rs), to check that both compute the same function
and to time both on the same machine in one run.

Run it through bench/torch_reference.sh, which makes the virtual environment and builds
realfill. What it does:

1. Equivalence: builds the network with seeded random weights (conv_out included, which
   realfill zero-initialises, so that every layer matters), writes them to
   `weights.safetensors` (PyTorch names and layouts) and a batch, the forward output, the
   learning loss and the output after one learning step (weighted MSE, per-tensor gradient
   clipping at norm 1, Adam with burn's defaults) to `check.safetensors`. Then runs
   `realfill torch-check DIR`, which loads the weights with burn-store and compares.
2. Speed: times PyTorch's learning step (batch 8, 64x64 crops: forward, backward, clipping,
   Adam) and sampling step (one forward at 384x288, read back) with
   torch.set_num_threads(threads), and realfill's identical steps (`realfill torch-check DIR
   --time`: realfill's CPU network and, for comparison, burn's flex backend), interleaved
   round by round, and prints the medians and the ratios to PyTorch.

    bench/torch_reference.sh                # both, default network
    bench/torch_reference.sh --fixture DIR  # only write a tiny network's check files (tests)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

IN_CHANNELS = 11
TIME_FEATURES = 64


def groups(c):
    return 8 if c % 8 == 0 else 1


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_dim):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups(cin), cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups(cout), cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        s = self.skip(x) if self.skip is not None else x
        return s + h


class UNet(nn.Module):
    """Mirror of realfill's UNet: same module names, so the weights map one to one."""

    def __init__(self, channels, emb_dim):
        super().__init__()
        ch, n = channels, len(channels)
        self.time1 = nn.Linear(TIME_FEATURES, emb_dim)
        self.time2 = nn.Linear(emb_dim, emb_dim)
        self.conv_in = nn.Conv2d(IN_CHANNELS, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([ResBlock(ch[i], ch[i], emb_dim) for i in range(n)])
        self.downsamples = nn.ModuleList(
            [nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1) for i in range(n - 1)]
        )
        self.mid = ResBlock(ch[-1], ch[-1], emb_dim)
        self.up_convs = nn.ModuleList([nn.Conv2d(ch[i + 1], ch[i], 3, padding=1) for i in range(n - 1)])
        self.up_blocks = nn.ModuleList([ResBlock(2 * ch[i], ch[i], emb_dim) for i in range(n - 1)])
        self.norm_out = nn.GroupNorm(groups(ch[0]), ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, x, time):
        emb = F.silu(self.time2(F.silu(self.time1(time))))
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, emb)
            if i < len(self.downsamples):
                skips.append(h)
                h = self.downsamples[i](h)
        h = self.mid(h, emb)
        for i in reversed(range(len(self.up_blocks))):
            h = self.up_convs[i](F.interpolate(h, scale_factor=2, mode="nearest"))
            h = torch.cat([h, skips[i]], 1)
            h = self.up_blocks[i](h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def time_features(ts):
    half = TIME_FEATURES // 2
    k = np.arange(half, dtype=np.float32)
    f = np.exp(-np.log(np.float32(10000.0)) * k / np.float32(half)).astype(np.float32)
    a = np.asarray(ts, dtype=np.float32)[:, None] * f[None, :]
    return np.concatenate([np.sin(a), np.cos(a)], 1).astype(np.float32)


def make_batch(rng, batch, size):
    """Random inputs shaped like realfill's learning batch (values, not the crops)."""
    x = rng.standard_normal((batch, IN_CHANNELS, size, size)).astype(np.float32)
    x[:, 3] = (rng.random((batch, size, size)) < 0.4).astype(np.float32)  # fill mask
    t = time_features(rng.integers(0, 1000, batch))
    residual = (0.3 * rng.standard_normal((batch, 3, size, size))).astype(np.float32)
    known = (rng.random((batch, 1, size, size)) < 0.8).astype(np.float32)
    weight = np.repeat(known, 3, axis=1)
    return x, t, residual, weight


def loss_fn(pred, residual, weight):
    d = pred - residual
    return (d * d * weight).sum() / (weight.sum() + 1e-6)


class Learner:
    """realfill's learning step: weighted MSE on the residual, each gradient tensor clipped
    to norm 1 (burn's GradientClippingConfig::Norm is per tensor), Adam with burn's defaults
    (betas 0.9/0.999, eps 1e-5)."""

    def __init__(self, model, lr):
        self.model = model
        self.params = [p for p in model.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-5)

    def step(self, x, t, residual, weight):
        x, t = torch.from_numpy(x), torch.from_numpy(t)
        residual, weight = torch.from_numpy(residual), torch.from_numpy(weight)
        self.opt.zero_grad(set_to_none=True)
        loss = loss_fn(self.model(x, t), residual, weight)
        value = loss.item()
        loss.backward()
        for p in self.params:
            torch.nn.utils.clip_grad_norm_([p], 1.0)
        self.opt.step()
        return value


def write_check(out_dir, channels, emb_dim, batch, size, seed, lr=1e-3):
    """Weights and expected outputs for `realfill torch-check` (and the Rust test)."""
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    model = UNet(channels, emb_dim)
    with torch.no_grad():
        # Give the GroupNorm affine parameters non-trivial values too.
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(out_dir, "weights.safetensors"))
    rng = np.random.default_rng(seed)
    x, t, residual, weight = make_batch(rng, batch, size)
    with torch.no_grad():
        y = model(torch.from_numpy(x), torch.from_numpy(t))
    learner = Learner(model, lr)
    loss = learner.step(x, t, residual, weight)
    with torch.no_grad():
        y_after = model(torch.from_numpy(x), torch.from_numpy(t))
    tensors = {
        "x": torch.from_numpy(x),
        "time": torch.from_numpy(t),
        "residual": torch.from_numpy(residual),
        "weight": torch.from_numpy(weight),
        "y": y.contiguous(),
        "loss": torch.tensor([loss], dtype=torch.float32),
        "y_after": y_after.contiguous(),
    }
    meta = {
        "channels": ",".join(str(c) for c in channels),
        "emb_dim": str(emb_dim),
        "lr": repr(lr),
        "producer": f"bench/torch_reference.py, torch {torch.__version__}",
    }
    save_file(tensors, os.path.join(out_dir, "check.safetensors"), metadata=meta)


def time_torch(channels, emb_dim, batch, crop, size, repeats, channels_last):
    torch.manual_seed(1)
    model = UNet(channels, emb_dim)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    learner = Learner(model, 1e-4)
    rng = np.random.default_rng(2)
    learn = []
    for i in range(repeats + 2):
        x, t, residual, weight = make_batch(rng, batch, crop)
        t0 = time.perf_counter()
        xt = torch.from_numpy(x).to(memory_format=fmt)
        learner.opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt, torch.from_numpy(t)), torch.from_numpy(residual), torch.from_numpy(weight))
        loss.item()
        loss.backward()
        for p in learner.params:
            torch.nn.utils.clip_grad_norm_([p], 1.0)
        learner.opt.step()
        if i >= 2:
            learn.append(time.perf_counter() - t0)
    w, h = size
    x = rng.standard_normal((1, IN_CHANNELS, h, w)).astype(np.float32)
    t = time_features([500])
    sample = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            y = model(torch.from_numpy(x).to(memory_format=fmt), torch.from_numpy(t))
            y.contiguous().numpy()
            if i >= 1:
                sample.append(time.perf_counter() - t0)
    return statistics.median(learn) * 1e3, statistics.median(sample) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realfill", default="realfill", help="the realfill binary")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of PyTorch and realfill timing")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--fixture", help="only write a tiny network's check files into this folder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)

    if a.fixture:
        write_check(a.fixture, [8, 16], 16, batch=2, size=16, seed=7)
        print(f"wrote {a.fixture}/weights.safetensors and check.safetensors")
        return

    channels, emb_dim, size = [32, 64, 96, 128], 128, (384, 288)
    work = tempfile.mkdtemp(prefix="realfill-torch-")
    print(f"torch {torch.__version__}, {a.threads} threads; realfill: {a.realfill}")
    print(f"equivalence check (weights and expected outputs in {work}) ...", flush=True)
    write_check(work, channels, emb_dim, batch=2, size=32, seed=3)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    r = subprocess.run([a.realfill, "torch-check", work], env=env)
    if r.returncode != 0:
        sys.exit("equivalence check FAILED: the timing below would compare different functions")

    rows = {"torch": [], "torch channels_last": [], "realfill": [], "realfill, burn flex": []}
    for _ in range(a.rounds):
        rows["torch"].append(time_torch(channels, emb_dim, a.batch, a.crop, size, a.repeats, False))
        rows["torch channels_last"].append(time_torch(channels, emb_dim, a.batch, a.crop, size, a.repeats, True))
        cmd = [a.realfill, "torch-check", work, "--time", "--repeats", str(a.repeats), "--batch", str(a.batch),
               "--crop", str(a.crop), "--width", str(size[0]), "--height", str(size[1])]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        j = json.loads(out.strip().splitlines()[-1])
        rows["realfill"].append((j["learn_ms"], j["sample_ms"]))
        rows["realfill, burn flex"].append((j["burn_learn_ms"], j["burn_sample_ms"]))

    med = {k: (statistics.median(v[0] for v in vs), statistics.median(v[1] for v in vs)) for k, vs in rows.items()}
    best_learn = min(med["torch"][0], med["torch channels_last"][0])
    best_sample = min(med["torch"][1], med["torch channels_last"][1])
    print(f"\nscene model {channels}, emb {emb_dim}; {a.threads} threads; medians of {a.rounds} rounds x {a.repeats}")
    print(f"{'':22} {'learning step (ms)':>20} {'sampling step (ms)':>20}")
    print(f"{'':22} {f'batch {a.batch}, {a.crop}x{a.crop}':>20} {f'{size[0]}x{size[1]}':>20}")
    for k, (l, s) in med.items():
        print(f"{k:22} {l:20.1f} {s:20.1f}")
    print(f"{'realfill / PyTorch':22} {med['realfill'][0] / best_learn:19.2f}x {med['realfill'][1] / best_sample:19.2f}x"
          "   (against the faster PyTorch layout)")
    print(f"{'burn flex / PyTorch':22} {med['realfill, burn flex'][0] / best_learn:19.2f}x "
          f"{med['realfill, burn flex'][1] / best_sample:19.2f}x")
    print("realfill = what realfill runs on the CPU (src/diffusion/cpu_unet); burn flex = the same network on burn's CPU backend")


if __name__ == "__main__":
    main()
