#!/usr/bin/env python3
"""The homography-paste baseline on the evaluation scenes, scored exactly like `realfill eval`:
OpenCV SIFT on the target's known region and on each reference, Lowe ratio test 0.75, RANSAC
homography (3 px), the best-aligned reference warped into the target frame and pasted into the
mask; where no reference covers a masked pixel (or none aligns), OpenCV Telea fills it.
Needs opencv-python-headless (with SIFT: OpenCV >= 4.4) and numpy.

    python3 bench/homography_baseline.py ../shared/data/scenes
"""
import os
import sys

import cv2
import numpy as np

from telea_baseline import psnr, report, scenes, ssim


def align(target, known, ref):
    sift = cv2.SIFT_create()
    kt, dt = sift.detectAndCompute(cv2.cvtColor(target, cv2.COLOR_BGR2GRAY), known.astype(np.uint8) * 255)
    kr, dr = sift.detectAndCompute(cv2.cvtColor(ref, cv2.COLOR_BGR2GRAY), None)
    if dt is None or dr is None or len(kt) < 4 or len(kr) < 4:
        return None, 0
    pairs = cv2.BFMatcher().knnMatch(dt, dr, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < 8:
        return None, len(good)
    src = np.float32([kt[m.queryIdx].pt for m in good])
    dst = np.float32([kr[m.trainIdx].pt for m in good])
    h, inl = cv2.findHomography(dst, src, cv2.RANSAC, 3.0)
    if h is None or inl.sum() < 8:
        return None, len(good)
    return h, int(inl.sum())


def main(root):
    rows = []
    for name, d, target, mask, truth in scenes(root):
        hh, ww = mask.shape
        best = None
        for r in sorted(os.listdir(os.path.join(d, "refs"))):
            ref = cv2.imread(os.path.join(d, "refs", r), cv2.IMREAD_COLOR)
            h, inliers = align(target, ~mask, ref)
            if h is not None and (best is None or inliers > best[1]):
                best = (cv2.warpPerspective(ref, h, (ww, hh)), inliers,
                        cv2.warpPerspective(np.ones(ref.shape[:2], np.uint8), h, (ww, hh)) > 0)
        out = target.copy()
        uncovered = mask.copy()
        if best is not None:
            paste = mask & best[2]
            out[paste] = best[0][paste]
            uncovered = mask & ~best[2]
        if uncovered.any():
            telea = cv2.inpaint(out, uncovered.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
            out[uncovered] = telea[uncovered]
        a, b = out.astype(np.float64) / 255, truth.astype(np.float64) / 255
        rows.append((name, psnr(a, b, mask), ssim(a, b, mask), f"inliers {best[1] if best else 0}"))
    report(rows)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/scenes")
