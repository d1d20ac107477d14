#!/usr/bin/env bash
# Train the default bundle end to end: base -> probes -> OoD proxy -> entropy maximisation.
# Usage: tools/train_default_bundle.sh CAMVID_DIR COCO_DIR OUT_DIR [BASE_MINUTES]
# Runs on CUDA when available (AMP), else CPU. `python -m ood_seg_ros.cli` == `ood-seg`.
set -euo pipefail
camvid=$1; coco=$2; out=$3; minutes=${4:-6}
py=${PYTHON:-python3}
ood() { "$py" -m ood_seg_ros.cli "$@"; }
ood train-base --camvid "$camvid" --out "$out/base" --train-splits train,val \
    --epochs 1000 --time-limit "$minutes" --val-every 10 --batch-size 16 --lr 0.02 \
    --class-weights sqrt_median_freq
ood train-probes --camvid "$camvid" --out "$out/probes" --init-bundle "$out/base/bundle" \
    --train-splits train,val --epochs 200 --time-limit 1.0 --patience 10 --val-every 2 \
    --batch-size 16 --lr 0.01 --class-weights sqrt_median_freq
ood make-ood-set --camvid "$camvid" --coco "$coco" --split train --group a \
    --out "$out/proxy_train_a" --seed 1 --overwrite
ood train-entropy --camvid "$camvid" --out "$out/entropy" --init-bundle "$out/probes/bundle" \
    --ood-proxy "$out/proxy_train_a" --train-splits train,val --epochs 4
