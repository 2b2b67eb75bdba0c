"""Fine-tuning throughput of the ddpm-celebahq-256 architecture (random weights) with `Trainer.fit`.

Reports images/s, peak memory and model FLOP utilisation at 128 and 256 px in bf16 on a GPU
(goal on one H100: >= 150 images/s at 256 px; the DDPM paper reports 140 on a TPU v3-8).
On a CPU it runs a tiny smoke size in float32 so the script itself stays tested.
    python bench/gpu_train.py [--sizes 128 256] [--batch-size 32] [--steps 30]
"""

import argparse
import time

import torch
from diffusers import DDPMScheduler, UNet2DModel
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from difftune.core.module import DiffusionFineTuner

CELEBAHQ_256 = dict(
    in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)  # fmt: skip
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


class Throughput(Callback):
    """Wall time of the steps after `warmup`, with the GPU synchronised at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.start


def train_flops(unet: UNet2DModel, batch_size: int, size: int, device: str) -> float:
    """FLOPs of one forward + backward pass, counted by Lightning's `measure_flops`."""
    x = torch.randn(batch_size, 3, size, size, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    flops = measure_flops(unet, lambda: unet(x, t).sample, lambda y: y.float().pow(2).mean())
    unet.zero_grad(set_to_none=True)
    return float(flops)


def run(size: int, batch_size: int, steps: int, warmup: int, device: str, precision: str) -> dict:
    config = dict(CELEBAHQ_256, sample_size=size)
    if device == "cpu":  # smoke size: same code path, a network small enough for a CPU
        config.update(block_out_channels=(32, 32, 64, 64, 64, 64), norm_num_groups=16)
    unet = UNet2DModel(**config).to(device)
    flops = train_flops(unet, batch_size, size, device)
    module = DiffusionFineTuner(
        unet, DDPMScheduler(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5)
    )
    data = [{"images": torch.randn(batch_size, 3, size, size), "skipped": []}] * steps
    timer = Throughput(warmup)
    trainer = Trainer(
        accelerator=device, devices=1, precision=precision, max_steps=steps, logger=False,
        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, DataLoader(data, batch_size=None, pin_memory=device != "cpu"))
    steps_per_s = (steps - warmup) / timer.seconds
    result = {
        "size": size, "params_M": sum(p.numel() for p in unet.parameters()) / 1e6,
        "images_per_s": steps_per_s * batch_size, "tflops": flops * steps_per_s / 1e12,
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
    }  # fmt: skip
    name = torch.cuda.get_device_name() if device == "cuda" else ""
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    result["mfu"] = result["tflops"] / peak if peak else float("nan")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256] if cuda else [32])
    parser.add_argument("--batch-size", type=int, default=32 if cuda else 2)
    parser.add_argument("--steps", type=int, default=30 if cuda else 4)
    parser.add_argument("--warmup", type=int, default=10 if cuda else 1)
    parser.add_argument("--precision", default="bf16-mixed" if cuda else "32-true")
    args = parser.parse_args()
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if cuda else "CPU (smoke size, not the real model)"
    print(f"{name}, {args.precision}, batch {args.batch_size}")
    results = [
        run(size, args.batch_size, args.steps, args.warmup, device, args.precision)
        for size in args.sizes
    ]
    for r in results:
        print(
            f"{r['size']:>4} px  {r['params_M']:.1f}M params  {r['images_per_s']:8.1f} images/s  "
            f"{r['tflops']:7.1f} TFLOP/s  MFU {r['mfu']:.1%}  peak {r['peak_mem_GiB']:.1f} GiB"
        )
    print(f"images/s at {results[-1]['size']} px: {results[-1]['images_per_s']:.1f}")


if __name__ == "__main__":
    main()
