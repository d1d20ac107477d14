#!/usr/bin/env bash
# Outlier-exposure rounds on one GPU, from a bundle (issue 18): the CPU recipe of
# tools/refresh_default_bundle_cpu.sh (step `oe`: decoder only, energy-margin loss,
# photometric / style augmentation, batch 8 of 288x384 crops, lr 1e-4, 364 steps a round,
# a fresh proxy made from CamVid `train` each round), continued for more rounds than a CPU
# affords, in chains side by side. OE_CHAINS lists them as NAME:ROAD_FRACTION:OBJECTS:
# FIRST_SEED[:LR], default the two of the third round:
#   a:0.7:1,4:100  the first rounds' proxy mix (70 % of the objects on the road, 1-4 a frame);
#   b:0.9:2,6:200  a road-heavy mix (90 % on the road, 2-6 per frame: more small, far ones).
# Only `train` frames are used; `val` gives the mIoU logged at the end of each round.
# Each chain keeps some of its rounds (OE_KEEP=thirds: a third, two thirds and the last one
# it finished; OE_KEEP=last: the last only) and, with OE_SOUP=1, the mean of the weights of
# its later rounds, ceil(r/2) to r (3-6 of 6; tools/average_bundles.py; packed as
# <chain>_soup.tar). Their SML / fused-score statistics are recomputed on `train` and
# each is packed as OUT/<chain>_r<round>.tar. Calibration, the default region and the
# meta classifier are then fitted on the CPU: tools/refresh_default_bundle_cpu.sh DATA OLD
# OUT calibrate.
# Usage: tools/oe_rounds_gpu.sh DATA_DIR OLD_BUNDLE WORK_DIR PACK_DIR
# Env: OE_CHAINS, OE_KEEP (thirds), OE_SOUP (0), OE_BUDGET_S (wall-clock budget, 420 s),
#   OE_MAX_ROUNDS (8), OE_STEPS (364), OE_DEVICE (cuda), OE_VAL_LIMIT / OE_SML_LIMIT
#   (0: every frame; small for a dry run on the CPU), PYTHON. A round that fails ends its
#   chain; the rounds before it are packed.
set -uo pipefail
data=$1; old=$2; work=$3; pack=$4
camvid=$data/camvid; coco=$data/coco128_seg
budget=${OE_BUDGET_S:-420}; max_rounds=${OE_MAX_ROUNDS:-8}; steps=${OE_STEPS:-364}
device=${OE_DEVICE:-cuda}; val_limit=${OE_VAL_LIMIT:-0}; sml_limit=${OE_SML_LIMIT:-0}
chains=${OE_CHAINS:-a:0.7:1,4:100 b:0.9:2,6:200}; keep_mode=${OE_KEEP:-thirds}
soup=${OE_SOUP:-0}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
ood() { "$py" -m ood_seg_ros.cli "$@"; }
. "$here/oe_round.sh"
t0=$(date +%s)
mkdir -p "$work" "$pack"

pack_bundle() {  # CHAIN DIR TAG: train statistics, then OUT/<chain>_<tag>.tar
    local name=$1 dir=$2 tag=$3
    ood sml-stats --bundle "$dir/bundle" --camvid "$camvid" --split train \
        --device "$device" --limit "$sml_limit" > "$work/$name.$tag.sml.log" 2>&1 ||
        { echo "chain $name: sml-stats of $tag failed"; return 0; }
    tar -C "$dir" -cf "$pack/${name}_$tag.tar" bundle $(cd "$dir" && ls metrics.jsonl 2>/dev/null)
    echo "chain $name: packed $tag"
}

chain() {  # NAME ROAD_FRACTION OBJECTS FIRST_SEED [LR]
    local name=$1 road=$2 objects=$3 seed0=$4 lr=${5:-1e-4} b=$old r=0 last=0 t start
    while [ "$r" -lt "$max_rounds" ]; do
        t=$(date +%s)
        # start a round only if one more (as long as the longest so far) fits the budget
        if [ "$r" -gt 0 ] && [ $((t - t0 + last + last / 3 + 30)) -gt "$budget" ]; then break; fi
        r=$((r + 1)); start=$t
        if ! oe_round "$b" "$work/$name/r$r" "$work/$name/proxy" $((seed0 + r)) "$road" \
                "$objects" decoder "$lr" "$steps" "$r" "$val_limit" "$work/$name.r$r"; then
            echo "chain $name round $r failed: $(tail -n 1 "$work/$name.r$r".*.log)"
            r=$((r - 1)); break
        fi
        b=$work/$name/r$r/bundle
        t=$(date +%s)
        [ $((t - start)) -gt "$last" ] && last=$((t - start))
        echo "chain $name round $r: $((t - start)) s, $(tail -n 1 "$work/$name/r$r/metrics.jsonl")"
    done
    [ "$r" -gt 0 ] || return 0
    local keep k
    if [ "$keep_mode" = last ]; then keep=$r
    else keep=$(printf '%s\n' $(( (r + 2) / 3 )) $(( (2 * r + 2) / 3 )) "$r" | sort -un); fi
    for k in $keep; do pack_bundle "$name" "$work/$name/r$k" "r$k"; done
    # the soup: the mean of the weights of rounds ceil(r/2) to r (at least two)
    if [ "$soup" = 1 ] && [ "$r" -ge 2 ]; then
        rm -rf "$work/$name/soup"
        if "$py" "$here/average_bundles.py" --out "$work/$name/soup/bundle" \
                $(for k in $(seq $(( (r + 1) / 2 )) "$r"); do echo "$work/$name/r$k/bundle"; done) \
                > "$work/$name.soup.log" 2>&1; then
            pack_bundle "$name" "$work/$name/soup" soup
        else echo "chain $name: soup failed: $(tail -n 1 "$work/$name.soup.log")"; fi
    fi
}

for spec in $chains; do
    IFS=: read -r -a f <<< "$spec"
    chain "${f[@]}" &
done
wait
tar -C "$work" -czf "$pack/logs.tgz" $(cd "$work" && ls *.log */r*/metrics.jsonl 2>/dev/null)
echo "done in $(( $(date +%s) - t0 )) s"
