#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (at most 9.5 minutes on an H100 or H200), most
# important first, each part under its own time limit so one that hangs leaves the others their time:
#   bash scripts/gpu_checks.sh [LOG_DIR]
# 1. bench/gpu_train.py --peer --compile: train.py hardware=gpu (and + model.compile=true, which
#    took over 2 minutes to build on an H200) on 512 real-size JPEGs against diffusers' Accelerate
#    loop; goal >= 150 images/s and >= 1.5x
# 2. bench/gpu_train.py --rows ...: the baseline, hardware=gpu's levers with and without gradient
#    checkpointing, and the 24 GiB recipe (every lever's own row was measured on an H200 already)
# 3. bench/gpu_sample.py --compile --no-guided: DDIM 40 steps, 256 px, batch 64, against
#    DDIMPipeline; goal >= 1.3x (met on an H200: 2.61x)
# 4. pytest -m gpu tests/test_gpu.py: bf16 fine-tune and export, the levers' losses, seeded runs
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
part gpu_train_peer 360 "$python" bench/gpu_train.py --peer --compile --steps 50 --warmup 20
part gpu_train_levers 60 "$python" bench/gpu_train.py --rows baseline "all" "24 GiB"
part gpu_sample 100 "$python" bench/gpu_sample.py --compile --no-guided
part tests 40 "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
echo "== done $(date +%T)"
