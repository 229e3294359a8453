#!/usr/bin/env bash
# Issue 32 (hostile input, third round; files and numbers): builds each crafted case in a
# temporary folder, runs BINARY on it under an 8 GB address-space cap and a 60 s timeout, and
# prints a markdown table: case | exit code | peak memory | first line of stderr (trimmed).
# Exit 134 is an abort, 101 a panic, 124 the timeout.
#
#   bench/hostile_files.sh [BINARY]      (default: target/release/realfill)
#
# Run a copy of it while the tree changes (bash reads a script as it runs).
#
# Needs python3 (standard library only: it writes the PNG, BigTIFF and JPEG-free images) and
# mkfifo. Nothing outside the temporary folder is touched; a "victim" file stands in for the
# file a planted link points at.
set -u
BIN=$(realpath "${1:-target/release/realfill}")
# The repository (its demo scene and tiny Stable Diffusion model); REALFILL_ROOT when the script
# runs from a copy elsewhere.
ROOT=${REALFILL_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
T=$(mktemp -d /tmp/realfill-hostile.XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
export REALFILL_CACHE="$T/cache"
unset DISPLAY WAYLAND_DISPLAY
DEMO="$ROOT/assets/demo"
SD="$ROOT/tests/fixtures/sd-tiny"
TIME=/usr/bin/time
[ -x "$TIME" ] || TIME=""

echo "| case | exit | peak MiB | message (first line of stderr) |"
echo "|---|---|---|---|"

# run NAME CMD...: one row. The message is stderr's first line that says "error"/"warning"
# (eval: "not scored"; else its first line), trimmed to 150 characters; NOTE (if set) is
# appended.
run() {
  local name=$1; shift
  local err="$T/err.txt" mem="$T/mem.txt"
  rm -f "$mem"
  if [ -n "$TIME" ]; then
    ( ulimit -v 8000000; timeout 60 "$TIME" -o "$mem" -f %M "$@" >/dev/null 2>"$err" )
  else
    ( ulimit -v 8000000; timeout 60 "$@" >/dev/null 2>"$err" )
  fi
  local rc=$?
  local kib; kib=$(tail -1 "$mem" 2>/dev/null | grep -E '^[0-9]+$' || echo "")
  local mib="?"; [ -n "$kib" ] && mib=$((kib / 1024))
  local msg; msg=$(grep -m1 -E 'not scored|^(error|warning)|memory allocation|panicked|Aborted' "$err" || head -1 "$err")
  msg=$(echo "$msg" | sed "s#$T/##g; s#$ROOT/##g" | tr -d '|' | cut -c1-150)
  echo "| $name | $rc | $mib | $msg${NOTE:+ — $NOTE} |"
  NOTE=""
}
NOTE=""

py() { python3 - "$@"; }

# Images: grey PNGs of any size, a small BigTIFF.
py <<'EOF'
import struct, zlib
def png(path, w, h, colour, fn):
    ch = 3 if colour else 1
    raw = b''.join(b'\0' + bytes(fn(x, y) for x in range(w) for _ in range(ch)) for y in range(h))
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    hdr = struct.pack('>IIBBBBB', w, h, 8, 2 if colour else 0, 0, 0, 0)
    open(path, 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', hdr) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
tex = lambda x, y: (x * 7 + y * 13) % 256
png('wide.png', 65535, 8, True, tex)
png('wide-mask.png', 65535, 8, False, lambda x, y: 255 if 100 <= x < 140 and 2 <= y < 6 else 0)
png('small.png', 64, 48, True, tex)
png('small-ref.png', 64, 48, True, lambda x, y: tex(x + 3, y))
png('small-mask.png', 64, 48, False, lambda x, y: 255 if 20 <= x < 40 and 16 <= y < 32 else 0)
# BigTIFF, 64×48 RGB, one uncompressed strip; every value inline (8 bytes in BigTIFF).
w, h = 64, 48
pixels = bytes(tex(x, y) for y in range(h) for x in range(w) for _ in range(3))
entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, 0x000800080008), (259, 3, 1, 1), (262, 3, 1, 2),
           (273, 16, 1, 16 + 8 + 20 * 9 + 8), (277, 3, 1, 3), (278, 4, 1, h), (279, 16, 1, len(pixels))]
ifd = struct.pack('<Q', len(entries)) + b''.join(struct.pack('<HHQQ', *e) for e in entries) + struct.pack('<Q', 0)
open('big.tif', 'wb').write(b'II+\0' + struct.pack('<HHQ', 8, 0, 16) + ifd + pixels)
EOF

# --- crafted projects (opened by `realfill PROJECT`; no display, so the window fails after) ---
project() { # NAME MASK_JSON REFS_JSON
  printf '{"format":"realfill-project","version":1,"target":"%s","references":%s,"mask":%s}' \
    "$DEMO/target.png" "$3" "$2" >"$1"
}
project p-runs-1e10.realfill '{"width":100000,"height":100000,"runs":[10000000000]}' '[]'
run "project: mask run of 10^10 px" "$BIN" p-runs-1e10.realfill
project p-runs-1e12.realfill '{"width":1000000,"height":1000000,"runs":[1000000000000]}' '[]'
run "project: mask run of 10^12 px" "$BIN" p-runs-1e12.realfill
refs=$(python3 -c "import json; print(json.dumps(['$DEMO/refs/' + __import__('os').listdir('$DEMO/refs')[0]] * 6000))")
project p-refs.realfill null "$refs"
run "project: 6,000 references" "$BIN" p-refs.realfill
mkfifo fifo.realfill
run "project: a FIFO" "$BIN" fifo.realfill
ln -s /dev/zero zero.realfill
run "project: a link to /dev/zero" "$BIN" zero.realfill

# --- crafted Stable Diffusion folders (fill --demo --engine sd on the tiny fixture) ---
sd() { # NAME: a fresh copy of the tiny model
  rm -rf "$1"; cp -r "$SD" "$1"
}
edit_json() { # FILE PYTHON-STATEMENT on dict c
  python3 - "$1" "$2" <<'EOF'
import json, sys
p, stmt = sys.argv[1], sys.argv[2]
c = json.load(open(p)); exec(stmt); json.dump(c, open(p, 'w'))
EOF
}
# fill_sd MODEL [extra args] (a script, so that time and timeout can run it)
cat >fill_sd <<EOF
#!/bin/sh
m=\$1; shift
exec "$BIN" fill --demo --engine sd --model "\$m" --backend cpu --steps 2 --size 64 --quiet --out "$T/o.png" "\$@"
EOF
chmod +x fill_sd
sd m1; edit_json m1/unet/config.json 'c["sample_size"] = 100000'
run "SD: sample_size 100000" ./fill_sd m1
sd m2; edit_json m2/unet/config.json 'c["sample_size"] = 2**62'
run "SD: sample_size 2^62" ./fill_sd m2
sd m3; edit_json m3/scheduler/scheduler_config.json 'c["num_train_timesteps"] = 10**12'
run "SD: num_train_timesteps 10^12" ./fill_sd m3
sd m4; edit_json m4/vae/config.json 'c["norm_num_groups"] = 0'
run "SD: VAE norm_num_groups 0" ./fill_sd m4
sd m5; edit_json m5/scheduler/scheduler_config.json 'c["clip_sample"] = True; c["clip_sample_range"] = -1'
run "SD: clip_sample_range -1" ./fill_sd m5
sd m6; edit_json m6/scheduler/scheduler_config.json 'c["beta_schedule"] = "linear"; c["beta_end"] = 2.0'
rm -f o.png
run "SD: betas above 1" ./fill_sd m6
sd m7; rm m7/unet/*.safetensors; mkfifo m7/unet/diffusion_pytorch_model.safetensors
run "SD: weights file is a FIFO" ./fill_sd m7
sd m8; rm m8/unet/config.json; ln -s /dev/zero m8/unet/config.json
run "SD: config.json -> /dev/zero" ./fill_sd m8
sd m9
python3 - m9/tokenizer <<'EOF'
import json, sys
d = sys.argv[1]
v = json.load(open(d + '/vocab.json'))
lines = ['#version: 0.2']
sym = 'b'
for i in range(6000):
    lines.append(sym + ' a'); sym += 'a'; v[sym] = 300 + i % 10
json.dump(v, open(d + '/vocab.json', 'w'))
open(d + '/merges.txt', 'w').write('\n'.join(lines) + '\n')
EOF
run "SD: 6,000 chained merges, 130 KB prompt" ./fill_sd m9 --prompt "b$(head -c 129999 /dev/zero | tr '\0' a)"
run "--token-file /dev/zero" "$BIN" fill --demo --backend remote=ws://127.0.0.1:9 --token-file /dev/zero --quiet --out "$T/o.png"

# --- a cached scene model that is a FIFO ---
( "$BIN" fill --demo --engine scene --learn-steps 1 --steps 1 --size 64 --backend cpu --quiet --out "$T/warm.png" >/dev/null 2>&1 )
bpk=$(find "$REALFILL_CACHE" -name '*.bpk' | head -1)
if [ -n "$bpk" ]; then
  rm "$bpk"; mkfifo "$bpk"
  run "cached scene model is a FIFO" "$BIN" fill --demo --engine scene --learn-steps 1 --steps 1 --size 64 --backend cpu --quiet --out "$T/o.png"
else
  echo "| cached scene model is a FIFO | - | - | (no cached model was written to replace) |"
fi

# --- a link planted at the temporary output name ---
# The names of older builds, `.o.png.tmp-PID`, for the next 3,000 process ids (planted by one
# process: a fork per link would use the ids up).
mkdir -p shared; echo precious >victim.txt
python3 - "$T" <<'EOF'
import os, sys
t = sys.argv[1]
for pid in range(os.getpid(), os.getpid() + 3000):
    os.symlink(t + '/victim.txt', '%s/shared/.o.png.tmp-%d' % (t, pid))
EOF
run "planted links at .o.png.tmp-PID" "$BIN" fill --demo --quiet --out "$T/shared/o.png"
echo "| (planted links, after) | | | victim $(grep -q precious victim.txt && echo intact || echo OVERWRITTEN); o.png $( [ -L shared/o.png ] && echo 'a LINK' || echo 'a file') |"

# --- handled poorly ---
"$BIN" fill --demo --quiet --out "$T/full.jpg" >/dev/null 2>&1
head -c $(( $(stat -c %s full.jpg) / 2 )) full.jpg >half.jpg
rm -f o.png
run "truncated JPEG target" "$BIN" fill --target half.jpg --mask "$DEMO/mask.png" --ref "$DEMO"/refs/* --quiet --out "$T/o.png"
echo old >ro.png; chmod 444 ro.png
run "read-only existing output" "$BIN" fill --demo --quiet --out "$T/ro.png"
NOTE="afterwards: mode $(stat -c %a ro.png), $( grep -q old ro.png && echo 'content kept' || echo 'replaced')"
echo "| (read-only output, after) | | | $NOTE |"; NOTE=""
touch marker
run "no HOME (scene model cache)" env -u HOME -u XDG_CACHE_HOME -u REALFILL_CACHE "$BIN" fill --demo --engine scene --learn-steps 1 --steps 1 --size 64 --backend cpu --out "$T/o.png"
used=$(grep -c /tmp/realfill-cache "$T/err.txt")
echo "| (no HOME, after) | | | lines naming the world-shared /tmp/realfill-cache: $used; models written there: $(find /tmp/realfill-cache -newer marker -name '*.bpk' 2>/dev/null | wc -l) |"
mkdir -p ev1/s-rect/refs ev2/s-rect
for e in ev1 ev2; do cp "$DEMO/target.png" "$DEMO/mask.png" $e/s-rect/; cp "$DEMO/target.png" $e/s-rect/truth.png; done
cp "$DEMO"/refs/* ev1/s-rect/refs/; mkfifo ev1/s-rect/refs/zz-pipe.png
run "eval: a FIFO among the references" "$BIN" eval --size 64 ev1
mkdir -p elsewhere; cp ev2/s-rect/truth.png elsewhere/; ln -s "$T/elsewhere" ev2/s-rect/refs
run "eval: refs/ a symlink to the truth" "$BIN" eval --size 64 ev2
cp wide.png wide-ref.png
run "JPEG 65,535 px wide" "$BIN" fill --target wide.png --mask wide-mask.png --ref wide-ref.png --quiet --out "$T/wide.jpg"
run "BigTIFF target" "$BIN" fill --target big.tif --mask small-mask.png --ref small-ref.png --quiet --out "$T/o.png"
