#!/usr/bin/env bash
# The CUDA checks in ONE call of at most 8 minutes (TOTAL_LIMIT, 470 s: each check gets at most what is left of it, the
# rest are skipped and say so), most important first, each log in ${OUT:-gpu_checks_out}/:
#   1. quickstart_gpu: the quick start on a GPU (trainer=gpu: bf16-mixed, compile=auto -> torch.compile on, views made
#      on the device), linear probe beside both baselines
#   2. sync_debug: 20 steady-state steps of that run under torch.cuda.set_sync_debug_mode("error") (scripts/sync_debug.py),
#      then 10 of method=dinov2 (multi-crop, host-drawn masks, Sinkhorn-Knopp, KoLeo)
#   3. throughput: bf16-mixed, ResNet-18 / ResNet-50, channels_last (auto), compile off: framework step over a plain loop
#      and the Python ms/step column (scripts/bench_throughput.py); 4. throughput_compiled: ResNet-50 with compile on
#   5. folder: a folder of mixed-size JPEGs, per-sample views vs the hybrid path vs the model-only ceiling (scripts/bench_folder.py)
#   6. vit_recipes: the ViT-S/16 GPU recipes end to end (experiment=dino_vit_small, mocov3_vit_small) on a synthetic
#      folder of 224 px JPEGs: images/s and peak memory (scripts/bench_recipes.py)
#   7. ddp_one_gpu: trainer=ddp (NCCL, SyncBatchNorm) on one GPU: the DDP code path, not a multi-GPU equivalence
#   8. dino_v2_v3: the DINOv2 ViT-S/14 and DINOv3-style ViT-S/16 (+ Gram teacher) recipes end to end as in 6: a few
#      steady-state steps, images/s and peak memory (experiment=dinov2_vit_small, dinov3_vit_small)
# Run from the repository root on a CUDA machine with ssl_train and its vit extra installed: bash scripts/gpu_checks.sh
set -u
began=$(date +%s)
total=${TOTAL_LIMIT:-470}  # the whole script's budget (one device call of at most 8 minutes): later checks get what is left
out=${OUT:-gpu_checks_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/env.log"
python -c "import torch, lightning, timm; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$out/env.log"

check() {  # check NAME LIMIT COMMAND...: runs it under `timeout`, keeps the log, prints its status and the log's last lines
    local name=$1 limit=$2 start left
    shift 2
    left=$(( total - ($(date +%s) - began) ))
    if (( left < 30 )); then echo "== $name: skipped, ${left} s of the ${total} s budget left"; return; fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout -k 5 "$limit" "$@" > "$out/$name.log" 2>&1  # SIGKILL 5 s after SIGTERM if the check ignores it
    echo "== $name: exit $? after $(( $(date +%s) - start )) s"
    grep -v -i -e warning -e "^ *warnings.warn" "$out/$name.log" | tail -n "${TAIL_LINES:-14}"
}

check quickstart_gpu "${QUICK_LIMIT:-100}" python -m ssl_train trainer=gpu paths.output_dir=/tmp/gpu_checks/quick
cp /tmp/gpu_checks/quick/metrics.json "$out/quickstart_metrics.json" 2>/dev/null
check sync_debug "${SYNC_LIMIT:-35}" python scripts/sync_debug.py --steps 20 compile=false
check sync_debug_dinov2 "${SYNC_DINOV2_LIMIT:-40}" python scripts/sync_debug.py --steps 10 --warmup 3 method=dinov2 compile=false data.batch_size=64
check throughput "${THROUGHPUT_LIMIT:-70}" python scripts/bench_throughput.py --preset gpu --rows 1 3 --rounds 1 --skip-probe --skip-peers --override compile=false
check throughput_compiled "${COMPILED_LIMIT:-80}" python scripts/bench_throughput.py --preset gpu --rows 3 --rounds 1 --skip-probe --skip-peers --override compile=true
check folder "${FOLDER_LIMIT:-50}" python scripts/bench_folder.py --images 3000 --rows per-sample:8 hybrid:8 --override trainer=gpu data.batch_size=256
check vit_recipes "${VIT_LIMIT:-100}" python scripts/bench_recipes.py
check ddp_one_gpu "${DDP_LIMIT:-35}" python -m ssl_train trainer=ddp trainer.devices=1 trainer.max_epochs=1 trainer.limit_train_batches=20 probe=false baseline=false paths.output_dir=/tmp/gpu_checks/ddp
check dino_v2_v3 "${DINOV2_LIMIT:-90}" python scripts/bench_recipes.py --experiments dinov2_vit_small dinov3_vit_small --steps 5 --warmup 3
# trainer=fsdp (issue 45; equivalence with DDP is tested on 2 gloo CPU processes, tests/test_fsdp_equivalence.py): FSDP2 on
# one GPU (NCCL, bf16-mixed: bf16 gathers, fp32 reduce), DINO ViT-S (4 px patches, 28 px) with activation checkpointing, a sharded
# last.ckpt, then its export (the gathered state dict -> model.safetensors)
check fsdp_one_gpu "${FSDP_LIMIT:-60}" python -m ssl_train trainer=fsdp trainer.devices=1 method=dino backbone=vit_small backbone.patch_size=4 ++backbone.grad_checkpointing=true trainer.max_epochs=1 trainer.limit_train_batches=10 probe=false baseline=false paths.output_dir=/tmp/gpu_checks/fsdp
check fsdp_export "${FSDP_EXPORT_LIMIT:-30}" python -m ssl_train.toolkit export --ckpt /tmp/gpu_checks/fsdp/checkpoints/last.ckpt --out /tmp/gpu_checks/fsdp_export
