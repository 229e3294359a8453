#!/bin/bash
# Is the app's 100 % view the photo's own pixels? Opens a 12 MP scene photo in a real window
# (Xvfb, no window manager), presses `1` (100 %, about the pointer) with the pointer at a
# point of the canvas, takes a screenshot, finds a 260×200 crop of it in the file and prints
# how far the screen is from the file: mean difference (levels of 255), the share of exact
# pixels, and fine detail (mean |Laplacian|) on screen and in the file.
# Usage: bench/app_100pct_exact.sh [BINARY]   (default: the release build)
# Needs Xvfb, xdotool, ImageMagick's `import`; Python with numpy and OpenCV (a venv made here).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/release/realfill}"
PHOTO="${REALFILL_SCENES:-../shared/data/scenes}/elephants-hires-rect/truth.png"
VENV="${REALFILL_TORCH_VENV:-/var/tmp/realfill-torch-venv}"
if ! "$VENV/bin/python" -c 'import cv2, numpy' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet numpy opencv-python-headless
fi
WORK=$(mktemp -d)
trap 'kill $APP $XVFB 2>/dev/null || true; rm -rf "$WORK"' EXIT
Xvfb :74 -screen 0 1280x800x24 >/dev/null 2>&1 &
XVFB=$!
sleep 1.5
export DISPLAY=:74
mkdir -p "$WORK/home"
cp "$PHOTO" "$WORK/photo.png"
HOME="$WORK/home" "$BIN" "$WORK/photo.png" >"$WORK/app.log" 2>&1 &
APP=$!
sleep 10
W=$(xdotool search --name realfill | head -1)
xdotool windowfocus "$W"; sleep 0.5
xdotool mousemove 613 417; sleep 0.5; xdotool key 1; sleep 1.5
# The pointer away from the crop (its brush outline would be in the screenshot).
xdotool mousemove 1100 780; sleep 1
import -window root "$WORK/screen.png"
"$VENV/bin/python" - "$PHOTO" "$WORK/screen.png" <<'EOF'
import sys, cv2, numpy as np
photo = cv2.imread(sys.argv[1]).astype(np.float32)
patch = cv2.imread(sys.argv[2]).astype(np.float32)[300:500, 500:760]
_, _, (x, y), _ = cv2.minMaxLoc(cv2.matchTemplate(photo, patch, cv2.TM_SQDIFF))
file = photo[y:y + 200, x:x + 260]
d = np.abs(file - patch)
detail = lambda im: np.abs(cv2.Laplacian(cv2.cvtColor(im.astype(np.uint8), cv2.COLOR_BGR2GRAY), cv2.CV_32F)).mean()
print(f"crop at ({x}, {y}) of the file: mean difference {d.mean():.2f}, exact pixels {(d.max(2) == 0).mean():.3f}, "
      f"detail on screen {detail(patch):.2f}, in the file {detail(file):.2f}")
EOF
