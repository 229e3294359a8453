"""Tiny random-weight Stable Diffusion inpainting models in diffusers layout, with diffusers'
and transformers' outputs on fixed inputs, for `realfill sd-check` (issue 18).

Each config differs in widths, head counts, layer counts, projections, time embedding, VAE
depth, activation and file precision. For each: the model folder (unet/, vae/, text_encoder/,
tokenizer/, scheduler/, model_index.json) and io.safetensors holding inputs and expected
outputs (`text.input_ids` → `text.last_hidden_state`; `unet.sample`, `unet.timestep`,
`unet.encoder_hidden_states` → `unet.out`; `vae.image` → `vae.latent_mean`; `vae.latent` →
`vae.decoded`), the prompts behind the ids in the file's metadata (`text.prompts`). Then runs
`realfill sd-check` on each unless --no-check.

Run through bench/diffusers_reference.sh (makes the venv). `--fixture DIR` writes only the
smallest config (fp16 weights) to DIR: tests/fixtures/sd-tiny, which `cargo test` checks.
"""
import argparse
import collections
import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

CORPUS = (
    "a photo of sks . a photo of a wall with a pattern , a sweater , a skyline at dusk . "
    "photos of the same scene from other angles ; the real texture of that wall . "
    "books on a shelf , basketball players , elephants in the grass , 12 photos !!"
).split()

PROMPTS = ["a photo of sks", "", "Photos of the same scene, café 12 — ÜBER!!"]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tokenizer(path, n_merges):
    """A CLIP-style BPE vocabulary learned on a few sentences: the 256 byte characters, the same
    with `</w>`, `n_merges` merges, the two special tokens."""
    chars = bytes_to_unicode()
    words = collections.Counter()
    for w in CORPUS:
        w = w.lower()
        s = [chars[b] for b in w.encode("utf-8")]
        s[-1] += "</w>"
        words[tuple(s)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append((a, b))
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    vocab = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), pad_token="!", model_max_length=77)
    tok.save_pretrained(path)
    return tok, len(vocab)


def randomise(model, gen):
    """Every parameter random (diffusers zero-initialises nothing here, but its default init
    makes some outputs tiny): weights N(0, 1/fan_in), norm scales 1 + N(0, 0.1²)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


CONFIGS = {
    # Two levels, linear projections, gelu text encoder, fp16 files: the committed fixture.
    "tiny-a": dict(
        unet=dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                  attention_head_dim=(2, 4), cross_attention_dim=16, use_linear_projection=True, norm_num_groups=8),
        vae=dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu"),
        merges=40, fp16=True, scheduler="pndm-v", size=32),
    # Three levels, conv projections, two transformer layers in one block, unflipped time
    # embedding with a shift, quick_gelu, old VAE attention names, fp32.
    "tiny-b": dict(
        unet=dict(block_out_channels=(32, 48, 48),
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=2,
                  attention_head_dim=8, cross_attention_dim=24, use_linear_projection=False, norm_num_groups=16,
                  transformer_layers_per_block=(1, 2, 1), flip_sin_to_cos=False, freq_shift=1),
        vae=dict(block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8, legacy_attention=True),
        text=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3,
                  hidden_act="quick_gelu"),
        merges=80, fp16=False, scheduler="ddim-eps", size=32),
    # Four levels like SD-2 (cross-attention in the first three), per-block heads, fp32.
    "tiny-c": dict(
        unet=dict(block_out_channels=(32, 32, 64, 64),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
                  attention_head_dim=(2, 4, 8, 8), cross_attention_dim=32, use_linear_projection=True,
                  norm_num_groups=16),
        vae=dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"),
        merges=60, fp16=False, scheduler="pndm-v", size=64),
}


def build(name, cfg, out, seed):
    gen = torch.Generator().manual_seed(seed)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tok, vocab_size = write_tokenizer(os.path.join(out, "tokenizer"), cfg["merges"])
    t = cfg["text"]
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=77,
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1,
                                        projection_dim=t["hidden_size"], **t)).eval()
    u = dict(cfg["unet"])
    unet = UNet2DConditionModel(sample_size=cfg["size"] // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1),
                                in_channels=9, out_channels=4, **u).eval()
    v = dict(cfg["vae"])
    legacy = v.pop("legacy_attention", False)
    n = len(v["block_out_channels"])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        latent_channels=4, sample_size=cfg["size"], **v).eval()
    for m in (text, unet, vae):
        randomise(m, gen)
        if cfg["fp16"]:
            # The reference computes in f32 on the fp16-rounded weights realfill will read.
            m.half().float()
    # Inputs.
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    lat = cfg["size"] // 2 ** (n - 1)
    sample = torch.randn(2, 9, lat, lat, generator=gen)
    timestep = torch.tensor([999.0, 10.0])
    context = torch.randn(2, 77, u["cross_attention_dim"], generator=gen)
    image = (torch.rand(2, 3, cfg["size"], cfg["size"], generator=gen) * 2 - 1)
    latent = torch.randn(2, 4, lat, lat, generator=gen)
    with torch.no_grad():
        io = {
            "text.input_ids": ids.to(torch.int64),
            "text.last_hidden_state": text(ids).last_hidden_state,
            "unet.sample": sample, "unet.timestep": timestep, "unet.encoder_hidden_states": context,
            "unet.out": unet(sample, timestep, encoder_hidden_states=context).sample,
            "vae.image": image, "vae.latent_mean": vae.encode(image).latent_dist.mean,
            "vae.latent": latent, "vae.decoded": vae.decode(latent).sample,
        }
    variant = "fp16" if cfg["fp16"] else None
    for m, sub in ((text, "text_encoder"), (unet, "unet"), (vae, "vae")):
        if cfg["fp16"]:
            m = m.half()
        m.save_pretrained(os.path.join(out, sub), variant=variant, safe_serialization=True)
        m.float()  # .half() works in place; the weights were fp16-rounded already
    if legacy:
        rename_legacy_vae_attention(os.path.join(out, "vae"))
    # Written as SD-2 inpainting's own scheduler_config.json is (PNDM class, clip_sample false).
    sched = dict(_class_name="PNDMScheduler" if cfg["scheduler"] == "pndm-v" else "DDIMScheduler",
                 beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000, skip_prk_steps=True,
                 prediction_type="v_prediction" if cfg["scheduler"] == "pndm-v" else "epsilon")
    os.makedirs(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(sched, f, indent=1)
    io.update(pipeline_check(text, tok, unet, vae, sched, cfg["size"], gen))
    train = lora_step_check(text, tok, unet, vae, sched, cfg["size"], gen, out)
    io.update(train.pop("tensors"))
    save_file({k: x.contiguous() for k, x in io.items()}, os.path.join(out, "io.safetensors"),
              metadata={"text.prompts": json.dumps(PROMPTS), "config": name, **PIPE, **train})
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.35.2",
                   "realfill_test_model": name}, f, indent=1)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"{name}: {out} ({size / 1e6:.2f} MB)")


PIPE = {"pipe.prompt": "a photo of sks", "pipe.guidance": "7.5", "pipe.steps": "3"}


def pipeline_check(text, tok, unet, vae, sched, size, gen):
    """diffusers' StableDiffusionInpaintPipeline with DDIM on the folder's schedule, on a
    random image with a rectangular hole, from given starting noise; the masked image's latent
    is the distribution's mean (diffusers samples it; realfill takes the mean)."""
    from diffusers import StableDiffusionInpaintPipeline
    import numpy as np
    from PIL import Image
    cfg = {k: v for k, v in sched.items() if not k.startswith("_") and k != "skip_prk_steps"}
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                          scheduler=DDIMScheduler(**cfg), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe._encode_vae_image = lambda image, generator: vae.encode(image).latent_dist.mean * vae.config.scaling_factor
    rgb = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8).numpy()
    hole = np.zeros((size, size), np.uint8)
    hole[size // 4: size // 2 + 3, size // 8: size * 3 // 4] = 255
    lat = size // 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, 4, lat, lat, generator=gen)
    with torch.no_grad():
        out = pipe(prompt=PIPE["pipe.prompt"], image=Image.fromarray(rgb), mask_image=Image.fromarray(hole),
                   height=size, width=size, num_inference_steps=int(PIPE["pipe.steps"]),
                   guidance_scale=float(PIPE["pipe.guidance"]), latents=latents, output_type="pt").images
    return {"pipe.image": torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255,
            "pipe.mask": torch.from_numpy(hole)[None, None].float() / 255,
            "pipe.latents": latents, "pipe.out": out}


LORA_RANK = 4


def lora_train_step(unet, text, vae, sched, batch, lr_unet, lr_text):
    """RealFill's LoRA learning step on `batch` (images, masks, loss weights, noise, timesteps,
    prompt ids): the VAE's latent means, the inpainting UNet's input, the weighted noise loss;
    AdamW on the adapters (whatever requires a gradient). Returns the loss. Shared with
    bench/qlora_reference.py, which takes the same step on a quantised base."""
    import torch.nn.functional as F
    images, masks, weights, noise, timesteps, ids = batch
    lat = noise.shape[2]
    cfg = {k: v for k, v in sched.items() if not k.startswith("_") and k != "skip_prk_steps"}
    scheduler = DDIMScheduler(**cfg)
    opt_u = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=lr_unet, eps=1e-8, weight_decay=1e-2)
    opt_t = torch.optim.AdamW([p for p in text.parameters() if p.requires_grad], lr=lr_text, eps=1e-8, weight_decay=1e-2)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * sf
        masked = vae.encode(images * (masks < 0.5)).latent_dist.mean * sf
    noisy = scheduler.add_noise(latents, noise, timesteps)
    inp = torch.cat([noisy, F.interpolate(masks, size=(lat, lat)), masked], 1)
    pred = unet(inp, timesteps, encoder_hidden_states=text(ids)[0]).sample
    target = noise if cfg.get("prediction_type", "epsilon") == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    loss = (F.interpolate(weights, size=(lat, lat)) * (pred.float() - target.float()) ** 2).mean()
    loss.backward()
    opt_u.step()
    opt_t.step()
    return loss


def lora_step_check(text, tok, unet, vae, sched, size, gen, out):
    """One RealFill LoRA learning step with PEFT adapters (rank 4; the up matrices made
    non-zero so that every adapter gets a gradient): VAE latent means, random training masks,
    loss weights zero on part of one image (the target's unknown pixels), noise, timesteps, the
    prompt and an empty one; AdamW 2e-4 on the UNet's adapters, 4e-5 on the text encoder's.
    Writes the adapters before and after in diffusers' LoRA layout; returns the batch and loss."""
    import copy
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model_state_dict
    unet, text = copy.deepcopy(unet), copy.deepcopy(text)
    unet.requires_grad_(False)
    text.requires_grad_(False)
    vae.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights=True,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    text.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights=True,
                                target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    with torch.no_grad():
        for m in (unet, text):
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))

    def lora_state():
        d = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
        d.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(text).items()})
        return {k: v.detach().clone().contiguous() for k, v in d.items()}

    save_file(lora_state(), os.path.join(out, "lora_init.safetensors"), metadata={"lora_alpha": str(LORA_RANK)})
    b = 2
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    lat = size // f
    images = torch.rand(b, 3, size, size, generator=gen) * 2 - 1
    masks = torch.zeros(b, 1, size, size)
    masks[0, :, size // 4: size // 2, size // 8: size // 2] = 1
    masks[1, :, size // 2:, :] = 1
    weights = torch.ones(b, 1, size, size)
    weights[1, :, : size // 3, size // 2:] = 0
    noise = torch.randn(b, 4, lat, lat, generator=gen)
    timesteps = torch.tensor([700, 40])
    ids = tok(["a photo of sks", ""], padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    lr_unet, lr_text = 2e-4, 4e-5
    loss = lora_train_step(unet, text, vae, sched, (images, masks, weights, noise, timesteps, ids), lr_unet, lr_text)
    save_file(lora_state(), os.path.join(out, "lora_after.safetensors"), metadata={"lora_alpha": str(LORA_RANK)})
    tensors = {"train.images": images, "train.masks": masks, "train.weights": weights, "train.noise": noise,
               "train.timesteps": timesteps.to(torch.int64), "train.input_ids": ids.to(torch.int64),
               "train.loss": loss.detach().reshape(1)}
    return {"tensors": tensors, "train.lr_unet": str(lr_unet), "train.lr_text": str(lr_text),
            "train.lora_init": "lora_init.safetensors", "train.lora_after": "lora_after.safetensors"}


def rename_legacy_vae_attention(vae_dir):
    """Old diffusers checkpoints name the VAE's attention query/key/value/proj_attn."""
    from safetensors.torch import load_file
    for f in os.listdir(vae_dir):
        if f.endswith(".safetensors"):
            p = os.path.join(vae_dir, f)
            t = load_file(p)
            ren = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
            out = {}
            for k, x in t.items():
                for a, b in ren.items():
                    if "mid_block.attentions" in k:
                        k = k.replace(a, b)
                out[k] = x
            save_file(out, p, metadata={"format": "pt"})


def sd2_random(out):
    """A folder shaped exactly like stabilityai/stable-diffusion-2-inpainting (its published
    configs) with random fp16 weights: for timing and memory (`realfill bench --sd-model`), not
    for pictures. The real weights cannot be downloaded here."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    torch.manual_seed(0)
    write_tokenizer(os.path.join(out, "tokenizer"), 40)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True)
    unet.half().save_pretrained(os.path.join(out, "unet"), variant="fp16")
    del unet
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512)
    vae.half().save_pretrained(os.path.join(out, "vae"), variant="fp16")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                        num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
                                        max_position_embeddings=77, projection_dim=512))
    text.half().save_pretrained(os.path.join(out, "text_encoder"), variant="fp16")
    os.makedirs(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(dict(_class_name="PNDMScheduler", beta_start=0.00085, beta_end=0.012,
                       beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                       num_train_timesteps=1000, skip_prk_steps=True), f, indent=1)
    print(f"SD-2 inpainting shape, random fp16 weights: {out}")


def check_lora(model, lora_file, realfill):
    """A LoRA realfill wrote, loaded into diffusers: the text encoder and UNet outputs on the
    model's own io inputs, which `realfill sd-check --lora` must reproduce with the same file."""
    from diffusers import StableDiffusionInpaintPipeline
    from safetensors.torch import load_file
    kw = dict(variant="fp16", torch_dtype=torch.float32)
    pipe = StableDiffusionInpaintPipeline(
        vae=AutoencoderKL.from_pretrained(model, subfolder="vae", **kw),
        text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **kw),
        tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kw),
        scheduler=DDIMScheduler.from_pretrained(model, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(lora_file)
    io = load_file(os.path.join(model, "io.safetensors"))
    with torch.no_grad():
        out = {
            "text.input_ids": io["text.input_ids"],
            "text.last_hidden_state": pipe.text_encoder(io["text.input_ids"]).last_hidden_state,
            "unet.sample": io["unet.sample"], "unet.timestep": io["unet.timestep"],
            "unet.encoder_hidden_states": io["unet.encoder_hidden_states"],
            "unet.out": pipe.unet(io["unet.sample"], io["unet.timestep"],
                                  encoder_hidden_states=io["unet.encoder_hidden_states"]).sample,
        }
    import tempfile
    path = os.path.join(tempfile.gettempdir(), f"realfill-lora-io-{os.getpid()}.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    r = subprocess.run([realfill, "sd-check", "--model", model, "--io", path, "--lora", lora_file])
    sys.exit(r.returncode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--realfill", default="target/release/realfill")
    ap.add_argument("--out", default="/var/tmp/realfill-sd-tiny")
    ap.add_argument("--fixture", help="write only tiny-a here (the committed test fixture)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--sd2-random", metavar="DIR", help="write a random-weight SD-2-inpainting-shaped folder and stop")
    ap.add_argument("--check-lora", nargs=2, metavar=("MODEL", "LORA"),
                    help="load a LoRA realfill wrote into diffusers and check realfill computes the same with it")
    a = ap.parse_args()
    if a.check_lora:
        check_lora(*a.check_lora, a.realfill)
        return
    if a.sd2_random:
        sd2_random(a.sd2_random)
        return
    torch.manual_seed(0)
    torch.set_num_threads(2)
    if a.fixture:
        targets = [("tiny-a", a.fixture)]
    else:
        targets = [(n, os.path.join(a.out, n)) for n in CONFIGS]
    failed = False
    for i, (name, out) in enumerate(targets):
        build(name, CONFIGS[name], out, seed=100 + i)
        if not a.no_check:
            r = subprocess.run([a.realfill, "sd-check", "--model", out, "--io", os.path.join(out, "io.safetensors")])
            failed |= r.returncode != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
