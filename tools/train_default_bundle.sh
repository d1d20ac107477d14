#!/usr/bin/env bash
# Build the default bundle end to end by the clean protocol (issue 9): every training
# stage on CamVid `train` only; `val` for early stopping; calibration and the meta
# classifier on held-out validation sets (synthetic val = COCO group b pasted into CamVid
# val, and the two real anomaly sets); `test` for reporting only.
#   base -> probes -> SML statistics -> OoD proxy -> entropy maximisation (second bundle)
#   -> calibration (bundle size and 480x960) -> meta classifier
# Usage: tools/train_default_bundle.sh DATA_DIR OUT_DIR [BASE_MINUTES]
#   DATA_DIR holds camvid/, coco128_seg/ and real_ood/ (the shared data folder).
# Runs on CUDA when available (AMP), else CPU. `python -m ood_seg_ros.cli` == `ood-seg`.
# `ood-seg recipe --dataset KIND:PATH --coco ... --ood-val ...` chains these stages for any
# dataset kind in one resumable command (README "Train on your own data"); with --entropy it
# ships the entropy-maximisation bundle, which this script only reports.
set -euo pipefail
data=$1; out=$2; minutes=${3:-5.5}
camvid=$data/camvid; coco=$data/coco128_seg
real="--ood-set $data/real_ood/fs_lost_found --ood-set $data/real_ood/road_anomaly21"
py=${PYTHON:-python3}
ood() { "$py" -m ood_seg_ros.cli "$@"; }
ood train-base --camvid "$camvid" --out "$out/base" --train-splits train \
    --epochs 1000 --time-limit "$minutes" --val-every 10 --batch-size 16 --lr 0.02 \
    --class-weights sqrt_median_freq
ood train-probes --camvid "$camvid" --out "$out/probes" --init-bundle "$out/base/bundle" \
    --train-splits train --epochs 60 --time-limit 14 --patience 15 --val-every 5 \
    --batch-size 16 --lr 0.01 --class-weights sqrt_median_freq \
    --probe-depth 3 --probe-channels 128 --probe-separable \
    --cache-features --cache-scales 0.75,1,1.25
ood sml-stats --bundle "$out/probes/bundle" --camvid "$camvid" --split train
ood make-ood-set --camvid "$camvid" --coco "$coco" --split train --group a \
    --out "$out/proxy_train_a" --seed 1 --overwrite
ood train-entropy --camvid "$camvid" --out "$out/entropy" --init-bundle "$out/probes/bundle" \
    --ood-proxy "$out/proxy_train_a" --train-splits train --epochs 4
ood make-ood-set --camvid "$camvid" --coco "$coco" --split val --group b \
    --out "$out/ood_val" --seed 2 --overwrite
# The road-obstacle type the real animal/object set lacks: objects on the road of val frames.
ood make-ood-set --camvid "$camvid" --coco "$coco" --split val --group b --placement road \
    --objects 2,5 --out "$out/road_val" --seed 5 --overwrite
# Calibrate at the bundle size first (it sets the top-level settings), then 480x960.
ood eval --bundle "$out/probes/bundle" --ood-set "$out/ood_val" $real \
    --select-set "$out/road_val" --calibrate
ood eval --bundle "$out/probes/bundle" --ood-set "$out/ood_val" $real \
    --select-set "$out/road_val" --calibrate --input-size 480x960
ood train-meta --bundle "$out/probes/bundle" --ood-set "$out/ood_val" $real \
    --balanced
echo "default bundle: $out/probes/bundle; entropy-maximisation bundle: $out/entropy/bundle"
