#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (at most 9.5 minutes on an H100 or H200), each part
# under its own time limit so one that hangs leaves the others their time:
#   bash scripts/gpu_checks.sh [LOG_DIR]
# 1. bench/gpu_train.py --compile --rows baseline "all:" "all + compile" --profile: bare
#    Trainer.fit, 256 px, batch 32, bf16: torch defaults, hardware=gpu's levers, + torch.compile
#    (a 182 s build for the forward and backward on a 2-core CPU), each with its top operators
#    (the eager rows were measured on an H200: 97 images/s)
# 2. bench/gpu_train.py --peer --compile --skip-eager: train.py hardware=gpu model.compile=true
#    on 512 real-size JPEGs (inductor's caches may be warm from part 1) against diffusers'
#    Accelerate loop; goal >= 150 images/s and >= 1.5x (eager train.py: 92.3, 1.02x on an H200)
# 3. bench/gpu_train.py --rows "24 GiB": the 24 GiB recipe with hardware=gpu's levers
# 4. pytest -m gpu tests/test_gpu.py: bf16 fine-tune and export, the levers' losses, seeded runs
# Sampling (bench/gpu_sample.py --compile) met its goal on an H200 (2.61x DDIMPipeline): not rerun.
# Compile with channels_last (`--compile --rows "channels_last + compile"`) waits for more time.
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
part gpu_train_levers 200 "$python" bench/gpu_train.py --compile --rows baseline "all:" \
  "all + compile" --profile
part gpu_train_peer 230 "$python" bench/gpu_train.py --peer --compile --skip-eager --steps 50 \
  --warmup 20
part gpu_train_recipe 45 "$python" bench/gpu_train.py --rows "24 GiB"
part tests 40 "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
echo "== done $(date +%T)"
