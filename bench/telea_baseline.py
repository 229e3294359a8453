#!/usr/bin/env python3
"""OpenCV Telea inpainting on the evaluation scenes, scored exactly like `realfill eval`
(PSNR over masked pixels, all channels; SSIM map per channel with an 11x11 Gaussian window,
sigma 1.5, averaged over masked pixels and channels). Needs opencv-python-headless and numpy.

    python3 bench/telea_baseline.py ../shared/data/scenes
"""
import os
import sys

import cv2
import numpy as np


def gauss_blur(x):
    return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REPLICATE)


def psnr(a, b, m):
    d = (a - b)[m]
    mse = float(np.mean(d * d))
    return 100.0 if mse <= 1e-12 else 10 * np.log10(1.0 / mse)


def ssim(a, b, m):
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for k in range(3):
        x, y = a[..., k].astype(np.float64), b[..., k].astype(np.float64)
        mx, my = gauss_blur(x), gauss_blur(y)
        vx = gauss_blur(x * x) - mx * mx
        vy = gauss_blur(y * y) - my * my
        cxy = gauss_blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        vals.append(s[m])
    return float(np.mean(np.concatenate(vals)))


def scenes(root):
    """(name, folder, target, mask, truth) for every scene folder under root."""
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isfile(os.path.join(d, "target.png")):
            continue
        target = cv2.imread(os.path.join(d, "target.png"), cv2.IMREAD_COLOR)
        mask = cv2.imread(os.path.join(d, "mask.png"), cv2.IMREAD_GRAYSCALE) >= 128
        truth = cv2.imread(os.path.join(d, "truth.png"), cv2.IMREAD_COLOR)
        yield name, d, target, mask, truth


def report(rows):
    """rows: (name, PSNR, SSIM, note). Per case, then means per mask kind and overall."""
    for r in rows:
        print(f"{r[0]:<22} {r[1]:7.2f} {r[2]:6.3f}  {r[3]}")
    kinds = sorted({r[0].rsplit("-", 1)[-1] for r in rows})
    for kind in kinds:
        rs = [r for r in rows if r[0].rsplit("-", 1)[-1] == kind]
        print(f"mean {kind:<17} {np.mean([r[1] for r in rs]):7.2f} {np.mean([r[2] for r in rs]):6.3f}")
    print(f"mean all {len(rows):<13} {np.mean([r[1] for r in rows]):7.2f} {np.mean([r[2] for r in rows]):6.3f}")


def main(root):
    rows = []
    for name, _, target, mask, truth in scenes(root):
        out = cv2.inpaint(target, mask.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
        a, b = out.astype(np.float64) / 255, truth.astype(np.float64) / 255
        rows.append((name, psnr(a, b, mask), ssim(a, b, mask), ""))
    report(rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/scenes")
