#!/usr/bin/env python3
"""Contact sheet for eval scenes: target (hole tinted) | reference(s) | fill | truth, one row
per scene, at 100 % (no resampling). Needs PIL + numpy (Debian: python3-pil python3-numpy).

    bench/sheet.py SCENES_DIR FILLS_DIR OUT.png scene-a scene-b ...
    (FILLS_DIR/<scene>.png as written by `realfill eval --save FILLS_DIR`; several FILLS_DIR may
    be given as DIR1,DIR2 to compare runs side by side)
"""
import os, sys
import numpy as np
from PIL import Image, ImageDraw

def load(p):
    return np.asarray(Image.open(p).convert("RGB")).astype(np.float32)

def main():
    scenes, fills, out, names = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4:]
    rows = []
    for n in names:
        d = os.path.join(scenes, n)
        t = load(os.path.join(d, "target.png"))
        m = np.asarray(Image.open(os.path.join(d, "mask.png")).convert("L")) > 127
        tinted = t.copy()
        tinted[m] = tinted[m] * 0.35 + np.array([255, 0, 255]) * 0.65
        refs = [load(os.path.join(d, "refs", f)) for f in sorted(os.listdir(os.path.join(d, "refs")))]
        cells = [tinted] + refs + [load(os.path.join(f, n + ".png")) for f in fills] + [load(os.path.join(d, "truth.png"))]
        h = max(c.shape[0] for c in cells)
        cells = [np.pad(c, ((0, h - c.shape[0]), (0, 4), (0, 0)), constant_values=255) for c in cells]
        row = Image.fromarray(np.concatenate(cells, axis=1).clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(row).text((4, 4), n, fill=(255, 255, 0))
        rows.append(np.asarray(row))
    w = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)

if __name__ == "__main__":
    main()
