#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go: the GPU tests and the GPU benchmarks.
#   bash scripts/gpu_checks.sh [LOG_DIR]
set -uo pipefail
log_dir=${1:-gpu_checks}
mkdir -p "$log_dir"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$log_dir/gpu.txt"
python -c "import torch, diffusers, lightning; print(torch.__version__, diffusers.__version__, lightning.__version__)" | tee -a "$log_dir/gpu.txt"
python -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$log_dir/tests.txt"
python bench/gpu_train.py 2>&1 | tee "$log_dir/gpu_train.txt"
python bench/train_overhead.py --device cuda 2>&1 | tee "$log_dir/train_overhead.txt"
python bench/guidance_cost.py --device cuda --steps 20 --batch 4 --size 256 2>&1 | tee "$log_dir/guidance_cost.txt"
python bench/guidance_cost.py --device cuda --peak-memory 2>&1 | tee -a "$log_dir/guidance_cost.txt"
python bench/ddp_scaling.py --gpu 2>&1 | tee "$log_dir/ddp_scaling.txt"
