#!/usr/bin/env bash
# Outlier exposure of the WHOLE segmentation network on one GPU (issue 18), from a bundle:
# backbone, ASPP and decoder train (train-entropy --train-part all; one round is
# tools/oe_round.sh), so the MOoSe probes are retrained on the new frozen features
# afterwards, then the SML / fused-score statistics are recomputed on `train`. Variants
# run side by side, each with its learning rate (OE_VARIANTS, NAME:LR:FIRST_SEED ...;
# default full_lr1e-5:1e-5:300 full_lr5e-5:5e-5:400) and a fresh proxy made from CamVid
# `train` each round (OE_ROAD of the objects on the road, OE_OBJECTS a frame; default
# 0.7 and 1,4, the mix of tools/oe_rounds_gpu.sh chain a). Only `train` frames are trained
# on; `val` gives the logged mIoU and the probes' early stopping. Each variant is packed as
# OUT/<name>.tar. Calibration, the default region and the meta classifier are then fitted
# on the CPU: tools/refresh_default_bundle_cpu.sh DATA OLD OUT calibrate.
# Probes (OE_PROBES): warm (default) continues the init bundle's probes at lr 0.006, as
#   the `continue` step of tools/refresh_default_bundle_cpu.sh (the features moved a
#   little, so a few epochs re-fit them); scratch trains new ones (depth 3, 128 channels,
#   separable, lr 0.01) and needs many more epochs: 4 epochs (1.5 minutes, two variants
#   side by side on an H200, 22-24 s an epoch) left them at val mIoU 44.6 % against the
#   shipped 52.9 %, too weak to compare MOoSe scores.
# Usage: tools/oe_full_gpu.sh DATA_DIR OLD_BUNDLE WORK_DIR PACK_DIR
# Env: OE_VARIANTS, OE_ROAD, OE_OBJECTS, OE_ROUNDS (3), OE_STEPS (364), OE_PROBES (warm),
#   OE_PROBE_EPOCHS (20), OE_PROBE_MIN (probe time limit in minutes, 6: a cap, not the
#   plan), OE_DEVICE (cuda), OE_VAL_LIMIT / OE_SML_LIMIT (0: every frame; small for a dry
#   run on the CPU), OE_SUBSET (probes: first N frames per split, 0: all), PYTHON.
set -uo pipefail
data=$1; old=$2; work=$3; pack=$4
camvid=$data/camvid; coco=$data/coco128_seg
rounds=${OE_ROUNDS:-3}; steps=${OE_STEPS:-364}; device=${OE_DEVICE:-cuda}
val_limit=${OE_VAL_LIMIT:-0}; sml_limit=${OE_SML_LIMIT:-0}
variants=${OE_VARIANTS:-full_lr1e-5:1e-5:300 full_lr5e-5:5e-5:400}
road=${OE_ROAD:-0.7}; objects=${OE_OBJECTS:-1,4}
case ${OE_PROBES:-warm} in
    warm) probe_args=(--lr 0.006) ;;
    scratch) probe_args=(--lr 0.01 --probe-depth 3 --probe-channels 128 --probe-separable) ;;
    *) echo "OE_PROBES must be warm or scratch, got ${OE_PROBES}"; exit 2 ;;
esac
py=${PYTHON:-python3}
ood() { "$py" -m ood_seg_ros.cli "$@"; }
. "$(dirname "$0")/oe_round.sh"
t0=$(date +%s)
mkdir -p "$work" "$pack"

variant() {  # NAME LR FIRST_SEED
    local name=$1 lr=$2 seed0=$3 b=$old r
    for r in $(seq 1 "$rounds"); do
        oe_round "$b" "$work/$name/r$r" "$work/$name/proxy" $((seed0 + r)) "$road" \
            "$objects" all "$lr" "$steps" "$r" "$val_limit" "$work/$name.r$r" ||
            { echo "$name round $r failed: $(tail -n 1 "$work/$name.r$r".*.log)"; return 0; }
        b=$work/$name/r$r/bundle
        echo "$name round $r: $(( $(date +%s) - t0 )) s, $(tail -n 1 "$work/$name/r$r/metrics.jsonl")"
    done
    ood train-probes --camvid "$camvid" --train-splits train --batch-size 16 \
        --class-weights sqrt_median_freq --device "$device" --cache-features \
        --cache-scales 0.75,1 --out "$work/$name/probes" --init-bundle "$b" \
        --epochs "${OE_PROBE_EPOCHS:-20}" --time-limit "${OE_PROBE_MIN:-6}" --patience 15 \
        --val-every 2 --val-limit "$val_limit" "${probe_args[@]}" \
        --subset "${OE_SUBSET:-0}" > "$work/$name.probes.log" 2>&1 ||
        { echo "$name probes failed: $(tail -n 1 "$work/$name.probes.log")"; return 0; }
    b=$work/$name/probes/bundle  # the best validation epoch's probes
    echo "$name probes: $(( $(date +%s) - t0 )) s, $(grep -a 'val_probes' "$work/$name.probes.log" | tail -n 1)"
    ood sml-stats --bundle "$b" --camvid "$camvid" --split train --device "$device" \
        --limit "$sml_limit" > "$work/$name.sml.log" 2>&1 ||
        { echo "$name sml-stats failed"; return 0; }
    cp "$work/$name/r$rounds/metrics.jsonl" "$b/oe_metrics.jsonl"
    cp "$work/$name.probes.log" "$b/probes.log"
    tar -C "$b/.." -cf "$pack/$name.tar" "$(basename "$b")"
    echo "$name packed: $(( $(date +%s) - t0 )) s"
}

for spec in $variants; do
    IFS=: read -r -a f <<< "$spec"
    variant "${f[@]}" &
done
wait
tar -C "$work" -czf "$pack/full_logs.tgz" $(cd "$work" && ls *.log)
echo "done in $(( $(date +%s) - t0 )) s"
