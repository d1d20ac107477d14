# One outlier-exposure round (issue 18), sourced by tools/oe_rounds_gpu.sh,
# tools/oe_full_gpu.sh and tools/refresh_default_bundle_cpu.sh so that the recipe is
# written once: a fresh proxy made from CamVid `train` (COCO cut-outs and procedural
# objects, part of them standing on the road, colour-matched, JPEG-compressed, a 4-pixel
# ignore band at their edge), then `train-entropy` from INIT with the energy-margin loss
# and photometric / style augmentation, batch 8 of 288x384 crops, 4 epochs at most.
# Only `train` frames are trained on; `val` gives the logged mIoU.
# Needs: the function `ood` (the ood-seg CLI) and the variables camvid, coco, device.
# oe_round INIT OUT PROXY PROXY_SEED ROAD_FRACTION OBJECTS TRAIN_PART LR STEPS TRAIN_SEED
#          VAL_LIMIT [LOG_PREFIX]
# With LOG_PREFIX the two steps write LOG_PREFIX.proxy.log and LOG_PREFIX.train.log;
# without it they print. Returns non-zero when a step fails.
oe_round() {
    local init=$1 out=$2 proxy=$3 seed=$4 road=$5 objects=$6 part=$7 lr=$8 steps=$9
    local tseed=${10} val_limit=${11} log=${12:-}
    local mk=(make-ood-set --camvid "$camvid" --coco "$coco" --split train --group a
              --seed "$seed" --placement mixed --road-fraction "$road" --objects "$objects"
              --ignore-band 4 --jpeg-quality 60,95 --out "$proxy" --overwrite)
    local tr=(train-entropy --camvid "$camvid" --init-bundle "$init" --ood-proxy "$proxy"
              --out "$out" --ood-loss energy --train-part "$part" --photometric
              --crop 288,384 --batch-size 8 --lr "$lr" --ood-ratio 1.0 --epochs 4
              --max-steps "$steps" --val-every 100 --val-limit "$val_limit"
              --device "$device" --seed "$tseed")
    if [ -n "$log" ]; then
        ood "${mk[@]}" > "$log.proxy.log" 2>&1 && ood "${tr[@]}" > "$log.train.log" 2>&1
    else
        ood "${mk[@]}" && ood "${tr[@]}"
    fi
}
