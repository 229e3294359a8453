"""PEFT's LoRA learning step on a `realfill quantize` folder's base weights (QLoRA), for
`realfill sd-check`: is realfill's step on the quantised base the step PEFT takes on that
same base? The quantised UNet and text encoder are widened here as realfill widens them
(NF4 level or int8 code × the block's f16 absmax), put into diffusers'/transformers' f32
networks built from the float folder (the VAE is not quantised), and the fixture's own LoRA
step is repeated on them: same batch, noise, timesteps, adapters and learning rates
(io.safetensors' `train.*`, written by bench/diffusers_reference.py).

    realfill quantize --model tests/fixtures/sd-tiny --bits 4 --out Q
    python bench/qlora_reference.py --float tests/fixtures/sd-tiny --quantised Q \
        --out tests/fixtures/sd-tiny --prefix qlora_nf4_
    realfill sd-check --model Q --io tests/fixtures/sd-tiny/qlora_nf4_io.safetensors

(the committed `qlora_nf4_*` files, which `cargo test` checks: `dev::sd_check` tests).

The quantised base's own error (against PEFT on the f32 base) is `realfill sd-check --model
Q --io tests/fixtures/sd-tiny/io.safetensors`. Needs torch, diffusers, transformers, peft
(/var/tmp/realfill-torch-venv).
"""
import argparse
import json
import os
import shutil

import numpy as np

# transformers 5 otherwise asks for the `kernels` package to load any model.
os.environ.setdefault("USE_HUB_KERNELS", "0")
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from diffusers_reference import lora_train_step

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)


def widened(path):
    """The file's packed weights: {name: (codes' values [rows, ≥ cols], scales [rows, blocks], block)}."""
    with safe_open(path, "np") as f:
        meta = f.metadata()
        fmt, block = meta["realfill.quantization"], int(meta["realfill.block_size"])
        out = {}
        for name in f.keys():
            if not name.endswith(".absmax"):
                continue
            w = name[: -len(".absmax")]
            codes, absmax = f.get_tensor(w), f.get_tensor(name).astype(np.float32)
            rows = codes.shape[0]
            # In realfill's order of f32 operations: NF4 level × absmax; int8 code × (absmax / 127).
            if fmt == "nf4":
                c = codes.reshape(rows, -1)
                vals = NF4[np.stack([c >> 4, c & 15], axis=2).reshape(rows, -1)]
            else:
                vals = codes.reshape(rows, -1).astype(np.float32)
                absmax = absmax / np.float32(127.0)
            out[w] = (vals, absmax, block)
        return out


def put(module, path):
    """Replaces `module`'s packed weights by their widened values."""
    state = module.state_dict()
    for name, (vals, absmax, block) in widened(path).items():
        # transformers 5 names CLIPTextModel's tensors without `text_model.`.
        name = name if name in state else name.removeprefix("text_model.")
        shape = state[name].shape
        cols = int(np.prod(shape[1:]))
        vals = vals[:, :cols]
        scale = np.repeat(absmax, block, axis=1)[:, :cols]
        state[name] = torch.from_numpy((vals * scale).reshape(shape)).float()
    module.load_state_dict(state)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--float", required=True, help="the float folder (its io.safetensors has the LoRA step)")
    ap.add_argument("--quantised", required=True, help="`realfill quantize --model FLOAT --out` of it")
    ap.add_argument("--out", required=True, help="folder for PREFIXio.safetensors and PREFIXlora_after.safetensors")
    ap.add_argument("--prefix", default="")
    a = ap.parse_args()
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    variant = "fp16" if any(".fp16." in n for n in os.listdir(os.path.join(a.float, "unet"))) else None
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.float, "unet"), variant=variant).float().eval()
    text = CLIPTextModel.from_pretrained(os.path.join(a.float, "text_encoder"), variant=variant).float().eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(a.float, "vae"), variant=variant).float().eval()
    put(unet, os.path.join(a.quantised, "unet", "diffusion_pytorch_model.safetensors"))
    put(text, os.path.join(a.quantised, "text_encoder", "model.safetensors"))
    with open(os.path.join(a.float, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    io = load_file(os.path.join(a.float, "io.safetensors"))
    with safe_open(os.path.join(a.float, "io.safetensors"), "pt") as f:
        meta = f.metadata()
    lora_init = load_file(os.path.join(a.float, meta["train.lora_init"]))
    rank = next(v.shape[0] for k, v in lora_init.items() if "lora_A" in k)

    for m in (unet, text, vae):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    text.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    set_peft_model_state_dict(unet, {k[len("unet."):]: v for k, v in lora_init.items() if k.startswith("unet.")})
    # The adapter files name the text encoder's layers as transformers 4 does (`text_model.…`).
    bare = not any(k.startswith("text_model.") for k in text.state_dict())
    set_peft_model_state_dict(text, {k[len("text_encoder."):].removeprefix("text_model." if bare else "-"): v
                                     for k, v in lora_init.items() if k.startswith("text_encoder.")})

    def lora_state():
        d = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
        d.update({f"text_encoder.{'text_model.' if bare else ''}{k}": v
                  for k, v in get_peft_model_state_dict(text).items()})
        return {k: v.detach().clone().contiguous() for k, v in d.items()}

    before = lora_state()
    assert all(torch.equal(before[k], lora_init[k]) for k in lora_init), "adapters loaded as written"
    images, masks, weights, noise = io["train.images"], io["train.masks"], io["train.weights"], io["train.noise"]
    timesteps, ids = io["train.timesteps"], io["train.input_ids"]
    batch = (images, masks, weights, noise, timesteps, ids)
    loss = lora_train_step(unet, text, vae, sched, batch, float(meta["train.lr_unet"]), float(meta["train.lr_text"]))

    os.makedirs(a.out, exist_ok=True)
    init = os.path.join(a.out, "lora_init.safetensors")
    if not os.path.exists(init):
        shutil.copy(os.path.join(a.float, meta["train.lora_init"]), init)
    after = f"{a.prefix}lora_after.safetensors"
    save_file(lora_state(), os.path.join(a.out, after), metadata={"lora_alpha": str(rank)})
    tensors = {k: v.contiguous() for k, v in io.items() if k.startswith("train.") and k != "train.loss"}
    tensors["train.loss"] = loss.detach().reshape(1)
    keep = {k: meta[k] for k in ("train.lr_unet", "train.lr_text")}
    save_file(tensors, os.path.join(a.out, f"{a.prefix}io.safetensors"),
              metadata={**keep, "train.lora_init": "lora_init.safetensors", "train.lora_after": after})
    print(f"{a.out}: PEFT's step on {a.quantised}'s base, loss {loss.item():.6g}")


if __name__ == "__main__":
    main()
