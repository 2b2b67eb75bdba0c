#!/usr/bin/env bash
# Rebuild the embedded base pipeline: pretrain the tiny UNet on the synthetic "photo" style, then
# copy the exported pipeline into the package. Last run: see src/difftune/assets/tiny_base/TRAINING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=outputs/tiny_base_pretrain/build
rm -rf "$run_dir"
start=$(date +%s)
.venv/bin/python train.py experiment=tiny_base_pretrain hydra.run.dir="$run_dir" "$@"
seconds=$(( $(date +%s) - start ))
dest=src/difftune/assets/tiny_base
rm -rf "$dest" && mkdir -p "$(dirname "$dest")"
cp -r "$run_dir/pipeline" "$dest"
cp "$run_dir/loss_curve.png" "$dest/loss_curve.png"
cp "$(ls "$run_dir"/samples/step_*.png | tail -n 1)" "$dest/samples.png"
cat > "$dest/TRAINING.md" <<TXT
# tiny_base
Built by \`scripts/build_tiny_base.sh $*\` on $(date -u +%Y-%m-%d) in ${seconds} s
on $(nproc) CPU cores ($(uname -m)), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)').
Config: conf/experiment/tiny_base_pretrain.yaml (scratch UNet, synthetic "photo" style, 32 px).
Final metrics: $(tail -n 3 "$run_dir/metrics.csv" | tr '\n' ' ')
TXT
echo "built $dest in ${seconds} s"
