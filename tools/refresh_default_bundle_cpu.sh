#!/usr/bin/env bash
# How the shipped models/camvid_lite0 was refreshed on a CPU (issue 9), from the earlier
# bundle whose base network was trained on CamVid train+val (H100, 5.5 minutes):
#   probes retrained from scratch on `train` only (cached frozen-base features),
#   SML statistics on `train`, calibration and meta classifier on the two REAL validation
#   sets only (the guard refuses CamVid val and its pastes: the base trained on val).
# Usage: tools/refresh_default_bundle_cpu.sh DATA_DIR OLD_BUNDLE OUT_DIR
set -euo pipefail
data=$1; old=$2; out=$3
camvid=$data/camvid
real="--ood-set $data/real_ood/fs_lost_found --ood-set $data/real_ood/road_anomaly21"
py=${PYTHON:-python3}
ood() { "$py" -m ood_seg_ros.cli "$@"; }
ood train-probes --camvid "$camvid" --out "$out/probes" --init-bundle "$old" \
    --train-splits train --epochs 60 --time-limit 14 --patience 15 --val-every 5 \
    --batch-size 16 --lr 0.01 --class-weights sqrt_median_freq \
    --probe-depth 3 --probe-channels 128 --probe-separable --device cpu \
    --cache-features --cache-scales 0.75,1,1.25
b=$out/probes/bundle
ood sml-stats --bundle "$b" --camvid "$camvid" --split train
ood eval --bundle "$b" $real --calibrate
ood eval --bundle "$b" $real --calibrate --input-size 480x960
ood train-meta --bundle "$b" $real --max-fp-per-frame 0.5
echo "refreshed bundle: $b"
