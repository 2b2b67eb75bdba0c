"""Steps/s of `python train.py hardware=ddp_cpu` (2 processes, gloo) ÷ one process, same batch each.

Both runs are the real command line (data, DDP, callbacks' throughput meter), 1 torch thread per
process, images/s read from `perf/images_per_s` in metrics.csv after the first window. With 2 CPU
cores the ideal is a steps/s ratio of 1.0 (twice the images/s); gradient all-reduce over gloo and
the shared memory bus make it lower. With `--gpu`, the single-GPU images/s of `hardware=gpu` on the
celebahq-256 architecture (random weights), to compare with bench/gpu_train.py's bare Trainer.
    python bench/ddp_scaling.py [--steps 60] [--batch-size 16]
    python bench/ddp_scaling.py --gpu [--size 256] [--batch-size 32]
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = [  # only the throughput meter: no grids, curves, checkpoints, validation or export
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "callbacks.model_checkpoint=null",
    "callbacks.final_checkpoint=null", "export_dir=null", "+trainer.limit_val_batches=0",
    "+trainer.enable_progress_bar=false", "callbacks.throughput.every_n_steps=10",
]  # fmt: skip
CELEBAHQ_256 = [
    "model=scratch", "model.unet.layers_per_block=2",
    "model.unet.block_out_channels=[128,128,256,256,512,512]",
    "model.unet.down_block_types=[DownBlock2D,DownBlock2D,DownBlock2D,DownBlock2D,AttnDownBlock2D,DownBlock2D]",
    "model.unet.up_block_types=[UpBlock2D,AttnUpBlock2D,UpBlock2D,UpBlock2D,UpBlock2D,UpBlock2D]",
]  # fmt: skip


def images_per_s(overrides: list[str]) -> float:
    """Mean `perf/images_per_s` of a train.py run, the first (warm-up) window left out."""
    with tempfile.TemporaryDirectory() as run_dir:
        env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
        command = [sys.executable, "train.py", *QUIET, *overrides, f"hydra.run.dir={run_dir}"]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        with open(Path(run_dir) / "metrics.csv") as f:
            values = [float(r["perf/images_per_s"]) for r in csv.DictReader(f)
                      if r.get("perf/images_per_s")]  # fmt: skip
    return sum(values[1:]) / len(values[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--size", type=int, default=256, help="--gpu only")
    args = parser.parse_args()
    common = [f"trainer.max_steps={args.steps}"]
    if args.gpu:
        batch = args.batch_size or 32
        overrides = [
            *common, *CELEBAHQ_256, "hardware=gpu", f"data.image_size={args.size}",
            f"data.batch_size={batch}", "data.num_images=1024", "data.num_workers=8",
        ]  # fmt: skip
        rate = images_per_s(overrides)
        print(f"hardware=gpu, celebahq-256 UNet, {args.size} px, batch {batch}, bf16-mixed")
        print(f"train.py images/s on one GPU: {rate:.1f}")
        return
    batch = args.batch_size or 16
    common += [f"data.batch_size={batch}"]
    one = images_per_s([*common, "hardware=cpu"])
    two = images_per_s([*common, "hardware=ddp_cpu"])
    print(f"embedded default, batch {batch} per process, {args.steps} steps, 1 thread per process")
    print(f"1 process:   {one:6.1f} images/s  {one / batch:5.2f} steps/s")
    print(f"2 processes: {two:6.1f} images/s  {two / (2 * batch):5.2f} steps/s")
    print(f"images/s ratio (ideal 2.0): {two / one:.2f}")
    print(f"steps/s ratio 2 processes / 1 (ideal 1.0): {two / 2 / one:.2f}")


if __name__ == "__main__":
    main()
