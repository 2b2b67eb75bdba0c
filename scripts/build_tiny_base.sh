#!/usr/bin/env bash
# Rebuild the embedded base pipeline: pretrain the tiny UNet on the synthetic "photo" style, then
# copy the exported pipeline into the package. Extra arguments are Hydra overrides; the shipped base was
#   scripts/build_tiny_base.sh hardware=gpu trainer.precision=32-true data.num_workers=6
# Last run: see src/difftune/assets/tiny_base/TRAINING.md (written by hand from the run's figures).
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=outputs/tiny_base_pretrain/build
rm -rf "$run_dir"
start=$(date +%s)
${PYTHON:-.venv/bin/python} train.py experiment=tiny_base_pretrain hydra.run.dir="$run_dir" "$@"
seconds=$(( $(date +%s) - start ))
dest=src/difftune/assets/tiny_base
notes=$(cat "$dest/TRAINING.md")
rm -rf "$dest" && mkdir -p "$(dirname "$dest")"
cp -r "$run_dir/pipeline" "$dest"
printf '%s\n' "$notes" > "$dest/TRAINING.md"
rm -f "$dest/README.md"  # the run's model card; TRAINING.md says how the base was made
cp "$run_dir/loss_curve.png" "$dest/loss_curve.png"
cp "$(ls "$run_dir"/samples/step_*.png | tail -n 1)" "$dest/samples.png"
echo "built $dest in ${seconds} s; final metrics: $(tail -n 3 "$run_dir/metrics.csv" | tr '\n' ' ')"
echo "now update the figures in $dest/TRAINING.md"
