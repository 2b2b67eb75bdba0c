#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (at most 9.5 minutes on an H100 or H200), each part
# under its own time limit so one that hangs leaves the others their time:
#   bash scripts/gpu_checks.sh [LOG_DIR]
# 1. bench/gpu_train.py --peer: train.py hardware=gpu (it compiles the UNet now) on 512 real-size
#    JPEGs against diffusers' Accelerate loop, and three variants: fused AdamW (with it the
#    non-finite guard skips a NaN step on the GPU, and a training step reads nothing on the host,
#    so the host queues the next step while the GPU runs this one; with plain AdamW the guard's
#    check waits for the GPU once a step), + channels_last (on an H200 28 % of the compiled
#    step's GPU time went to cuDNN's NCHW<->NHWC transposes), and + EMA (its update no longer
#    reads n_averaged on the host; what does EMA cost a step?). Goal >= 150 images/s and
#    >= 1.5x; on an H200: 133.1 images/s, 1.54x (bare compiled Trainer.fit: 152.8, its profile
#    202 ms of GPU time a step against 209 ms measured: the GPU ~97 % busy). Each run's images/s
#    per 10 steps (a dip per epoch?) and its profile of the 3 steps before the timed ones (the
#    GPU's busy share); the runs' whole output in LOG_DIR/train_py/.
#    Five processes (the peer, then four train.py runs, two of them compiling a graph of their
#    own, ~1 min each): the part has most of the time. A variant that fails prints its error
#    as its row and the next one runs.
# 2. pytest -m gpu tests/test_gpu.py: bf16 fine-tune and export, the levers' losses (compile
#    included), seeded runs, fused AdamW skipping a NaN batch on the GPU (never run yet)
# Not rerun, their goals met on an H200: sampling (bench/gpu_sample.py --compile, 2.61x
# DDIMPipeline) and the 24 GiB recipe (bench/gpu_train.py --rows "24 GiB", 62.8 images/s in
# 11.0 GiB; with --compile, the recipe as hardware=gpu would run it, when a session has time).
set -uo pipefail
log_dir=${1:-gpu_checks}
python=${PYTHON:-python3}
mkdir -p "$log_dir"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, installed or not

part() {  # part NAME SECONDS COMMAND...: run it under a limit, its output to LOG_DIR/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T), at most ${limit} s): $*" | tee "$log_dir/$name.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$log_dir/$name.txt"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  "$python" -c "import torch, diffusers, lightning, hydra, difftune.run.train
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'lightning',
      lightning.__version__, 'hydra', hydra.__version__)"
} 2>&1 | tee "$log_dir/gpu.txt"
grep -q "^torch" "$log_dir/gpu.txt" || { echo "the imports failed: see $log_dir/gpu.txt"; exit 1; }
part gpu_train_peer 440 "$python" bench/gpu_train.py --peer --steps 50 --warmup 20 --profile \
  --logs "$log_dir/train_py" --variants "model.optimizer.fused=true" \
  "model.optimizer.fused=true model.channels_last=true" "model.optimizer.fused=true ema=default"
part tests 100 "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
echo "== done $(date +%T)"
