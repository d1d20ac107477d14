#!/usr/bin/env bash
# How the shipped models/camvid_lite0 was refreshed on a CPU (issues 9, 18 and 24), from
# the earlier bundle whose base network was trained on CamVid train+val (H100, 5.5 minutes):
#   probes retrained from scratch on `train` only (cached frozen-base features, loss at
#   decoder resolution), then continued from those probes with a fresh poly schedule to
#   a plateau of the val probe mIoU,
#   SML and fused-score statistics on `train`,
#   calibration on the two REAL validation sets, with the synthetic val set and the
#   road-obstacle val set joining only the choice of the score (--select-set: the base
#   trained on val, so those sets rank scores but fit nothing), at the bundle size, at
#   480x960 and in obstacle mode (drivable prior + road band),
#   meta classifier on the two real sets (threshold: the balanced rule of train-meta),
#   for `all` and for the region the sweep chose.
# The default region (runtime.heatmap_region: all, or the drivable prior with its
# margin / fall-off / floor) is chosen by tools/obstacle_sweep.py after the calibration.
# Obstacle-mode calibration and meta classifier (drivable prior + road band) were fitted
# the same way and not shipped (model card); their two commands are at the end, behind
# OBSTACLE=1.
# Usage: tools/refresh_default_bundle_cpu.sh DATA_DIR OLD_BUNDLE OUT_DIR [STEP]
# STEP (default: probes): probes | continue | calibrate, to run from that step on; or
#   oe: outlier exposure from OLD_BUNDLE (decoder only, energy-margin loss, photometric
#   augmentation, on `train` and a road/scene proxy made from `train`), then calibrate.
#   OE_SEED (proxy seed, 18), OE_STEPS (300) and OE_TRAIN_SEED (0) set one round; a second
#   round continues from the first round's bundle with a fresh proxy (model card).
set -euo pipefail
data=$1; old=$2; out=$3; step=${4:-probes}
camvid=$data/camvid; coco=$data/coco128_seg
real="--ood-set $data/real_ood/fs_lost_found --ood-set $data/real_ood/road_anomaly21"
py=${PYTHON:-python3}
ood() { "$py" -m ood_seg_ros.cli "$@"; }
. "$(dirname "$0")/oe_round.sh"
probe_args="--camvid $camvid --train-splits train --batch-size 16 --class-weights sqrt_median_freq
    --device cpu --cache-features --cache-scales 0.75,1"
b=$out/probes2/bundle
if [ "$step" = oe ]; then
    device=cpu
    oe_round "$old" "$out/oe" "$out/proxy_train" "${OE_SEED:-18}" 0.7 1,4 decoder 1e-4 \
        "${OE_STEPS:-300}" "${OE_TRAIN_SEED:-0}" 16
    b=$out/oe/bundle
    step=calibrate
fi
if [ "$step" = probes ]; then
    ood train-probes $probe_args --out "$out/probes" --init-bundle "$old" \
        --epochs 80 --time-limit 28 --patience 15 --val-every 4 --lr 0.01 \
        --probe-depth 3 --probe-channels 128 --probe-separable
    step=continue
fi
if [ "$step" = continue ]; then
    ood train-probes $probe_args --out "$out/probes2" --init-bundle "$out/probes/bundle" \
        --epochs 18 --time-limit 95 --patience 8 --val-every 2 --lr 0.006
    step=calibrate
fi
ood sml-stats --bundle "$b" --camvid "$camvid" --split train
ood make-ood-set --camvid "$camvid" --coco "$coco" --split val --group b --seed 2 \
    --out "$out/ood_val_b" --overwrite
ood make-ood-set --camvid "$camvid" --coco "$coco" --split val --group b --seed 5 \
    --placement road --objects 2,5 --out "$out/road_val_b" --overwrite
select="--select-set $out/road_val_b --select-set $out/ood_val_b"
obstacle="--heatmap-region drivable --band --band-width 1024"
ood eval --bundle "$b" $real $select --calibrate --heatmap-region all
ood train-meta --bundle "$b" $real --balanced --heatmap-region all
ood eval --bundle "$b" $real $select --calibrate --input-size 480x960 --heatmap-region all
# the bundle's default region: `all` against a grid of drivable priors, by the rule fixed
# in tools/obstacle_sweep.py (real sets and both synthetic val sets); --apply writes the
# winner into runtime.heatmap_region / runtime.obstacle only when the rule ships it
"$py" "$(dirname "$0")/obstacle_sweep.py" --bundle "$b" $real \
    --ood-set "$out/road_val_b" --ood-set "$out/ood_val_b" \
    --report-set "$data/real_ood/fs_static" --out "$out/obstacle_sweep.json" --apply
# the meta classifier of the chosen region (meta_drivable.json), fitted on that region's
# segments, when the sweep chose a region other than `all` (whose meta.json is fitted above)
region=$("$py" -c 'import sys
from ood_seg_ros.model.bundle import read_bundle_json
from ood_seg_ros.pipeline import default_region
print(default_region(read_bundle_json(sys.argv[1]).get("runtime")))' "$b")
if [ "$region" != all ]; then
    ood train-meta --bundle "$b" $real --balanced
fi
if [ "${OBSTACLE:-0}" = 1 ]; then
    ood eval --bundle "$b" $real --select-set "$out/road_val_b" --calibrate $obstacle
    ood train-meta --bundle "$b" $real --balanced $obstacle
fi
echo "refreshed bundle: $b"
