#!/usr/bin/env bash
# Build the committed sample bag test/data/sample.bag (MCAP, rosbag2 metadata version 8):
# N consecutive CamVid test frames of one sequence (time order), synthetic OoD objects of
# COCO group c (test objects) pasted with a fixed seed, resized to 240x180, with the GT OoD
# mask (mono8 0/1/255) on /camera/ood_gt carrying the frames' stamps. Deterministic.
#
# Usage: tools/make_sample_bag.sh [OUT]   (env: DATA=../shared/data, N=20, SEQ=Seq05VD_,
#                                          SEED=6, PYTHON=.venv/bin/python)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$ROOT/../shared/data}
OUT=${1:-$ROOT/test/data/sample.bag}
N=${N:-20}
SEQ=${SEQ:-Seq05VD_}
SEED=${SEED:-6}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3

for d in "$DATA/camvid/test/images" "$DATA/camvid/test/labels" "$DATA/coco128_seg"; do
  [ -d "$d" ] || { echo "error: $d not found (set DATA=<shared data folder>)" >&2; exit 2; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/camvid/test/images" "$TMP/camvid/test/labels"
count=0
while IFS= read -r img; do
  stem=${img%.*}
  ln -s "$DATA/camvid/test/images/$img" "$TMP/camvid/test/images/$img"
  ln -s "$DATA/camvid/test/labels/$stem.png" "$TMP/camvid/test/labels/$stem.png"
  count=$((count + 1))
done < <(ls "$DATA/camvid/test/images" | grep "^$SEQ" | LC_ALL=C sort | head -n "$N")
[ "$count" -gt 0 ] || { echo "error: no $SEQ* frames in $DATA/camvid/test" >&2; exit 2; }

cd "$ROOT"
"$PY" -m ood_seg_ros.cli make-ood-set --camvid "$TMP/camvid" --coco "$DATA/coco128_seg" \
  --split test --group c --seed "$SEED" --out "$TMP/ood" --json > "$TMP/ood_summary.json"
rm -rf "$OUT"
"$PY" -m ood_seg_ros.cli make-bag --images "$TMP/ood" --with-gt --width 240 --height 180 \
  --rate 10 --start-time 1700000000 --storage mcap --out "$OUT"
du -sh "$OUT"
