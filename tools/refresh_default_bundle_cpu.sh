#!/usr/bin/env bash
# How the shipped models/camvid_lite0 was refreshed on a CPU (issues 9 and 18), from the
# earlier bundle whose base network was trained on CamVid train+val (H100, 5.5 minutes):
#   probes retrained from scratch on `train` only (cached frozen-base features, loss at
#   decoder resolution, to a plateau of the val probe mIoU or the time limit),
#   SML and fused-score statistics on `train`,
#   calibration on the two REAL validation sets, with the synthetic val set and the
#   road-obstacle val set joining only the choice of the score (--select-set: the base
#   trained on val, so those sets rank scores but fit nothing),
#   meta classifier on the two real sets.
# Usage: tools/refresh_default_bundle_cpu.sh DATA_DIR OLD_BUNDLE OUT_DIR
set -euo pipefail
data=$1; old=$2; out=$3
camvid=$data/camvid; coco=$data/coco128_seg
real="--ood-set $data/real_ood/fs_lost_found --ood-set $data/real_ood/road_anomaly21"
py=${PYTHON:-python3}
ood() { "$py" -m ood_seg_ros.cli "$@"; }
ood train-probes --camvid "$camvid" --out "$out/probes" --init-bundle "$old" \
    --train-splits train --epochs 80 --time-limit 28 --patience 15 --val-every 4 \
    --batch-size 16 --lr 0.01 --class-weights sqrt_median_freq \
    --probe-depth 3 --probe-channels 128 --probe-separable --device cpu \
    --cache-features --cache-scales 0.75,1
b=$out/probes/bundle
ood sml-stats --bundle "$b" --camvid "$camvid" --split train
ood make-ood-set --camvid "$camvid" --coco "$coco" --split val --group b --seed 2 \
    --out "$out/ood_val_b" --overwrite
ood make-ood-set --camvid "$camvid" --coco "$coco" --split val --group b --seed 5 \
    --placement road --objects 2,5 --out "$out/road_val_b" --overwrite
select="--select-set $out/road_val_b --select-set $out/ood_val_b"
ood eval --bundle "$b" $real $select --calibrate
ood eval --bundle "$b" $real $select --calibrate --input-size 480x960
ood train-meta --bundle "$b" $real --max-fp-per-frame 0.5
echo "refreshed bundle: $b"
