#!/usr/bin/env bash
# Build the default bundle end to end, exactly as models/camvid_lite0 was built:
# base -> probes -> OoD proxy -> entropy maximisation (second bundle) -> calibration and
# meta classifier on the validation OoD set (COCO group b).
# Usage: tools/train_default_bundle.sh CAMVID_DIR COCO_DIR OUT_DIR [BASE_MINUTES]
# Runs on CUDA when available (AMP), else CPU. `python -m ood_seg_ros.cli` == `ood-seg`.
set -euo pipefail
camvid=$1; coco=$2; out=$3; minutes=${4:-5.5}
py=${PYTHON:-python3}
ood() { "$py" -m ood_seg_ros.cli "$@"; }
ood train-base --camvid "$camvid" --out "$out/base" --train-splits train,val \
    --epochs 1000 --time-limit "$minutes" --val-every 10 --batch-size 16 --lr 0.02 \
    --class-weights sqrt_median_freq
ood train-probes --camvid "$camvid" --out "$out/probes" --init-bundle "$out/base/bundle" \
    --train-splits train,val --epochs 200 --time-limit 1.5 --patience 10 --val-every 2 \
    --batch-size 16 --lr 0.01 --class-weights sqrt_median_freq \
    --probe-depth 3 --probe-channels 128 --probe-separable
ood make-ood-set --camvid "$camvid" --coco "$coco" --split train --group a \
    --out "$out/proxy_train_a" --seed 1 --overwrite
ood train-entropy --camvid "$camvid" --out "$out/entropy" --init-bundle "$out/probes/bundle" \
    --ood-proxy "$out/proxy_train_a" --train-splits train,val --epochs 4
ood make-ood-set --camvid "$camvid" --coco "$coco" --split val --group b \
    --out "$out/ood_val" --seed 2 --overwrite
ood eval --bundle "$out/probes/bundle" --ood-set "$out/ood_val" --calibrate
ood train-meta --bundle "$out/probes/bundle" --ood-set "$out/ood_val" --target-tp-kept 0.9
echo "default bundle: $out/probes/bundle; entropy-maximisation bundle: $out/entropy/bundle"
