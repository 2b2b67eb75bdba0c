"""Steps/s of `Trainer.fit` with `DiffusionFineTuner` divided by the article's bare PyTorch loop.

Same UNet, same pre-made batches, same optimizer, one process, measured in one run (interleaved
rounds, best of each), and the FLOPs of one training step (Lightning's `measure_flops`). The ratio
is printed last; the goal is >= 0.95.
    python bench/train_overhead.py [--steps 40] [--rounds 3] [--device cpu]
"""

import argparse
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from difftune.callbacks import NonFiniteGuard
from difftune.core.module import DiffusionFineTuner


def make_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=32, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def article_loop(batches: list[torch.Tensor], device: str, warmup: int) -> float:
    """The article's loop (noise, randint timesteps, add_noise, MSE, backward, step): steps/s."""
    unet = make_unet().to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    for step, clean_images in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        clean_images = clean_images.to(device)
        noise = torch.randn_like(clean_images)
        timesteps = torch.randint(0, 1000, (clean_images.size(0),), device=device)
        noisy_images = scheduler.add_noise(clean_images, noise, timesteps)
        noise_pred = unet(noisy_images, timesteps)[0]
        loss = F.mse_loss(noise_pred, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    loss.item()
    return (len(batches) - warmup) / (time.perf_counter() - start)


def step_flops(batch_size: int, device: str) -> int:
    """FLOPs of one training step of the benchmarked UNet: forward, MSE loss and backward."""
    unet = make_unet().to(device)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    return measure_flops(unet, lambda: unet(x, t)[0], lambda y: F.mse_loss(y, torch.randn_like(y)))


class StepTimer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_fit(batches: list[torch.Tensor], device: str, warmup: int) -> tuple[float, float]:
    """`Trainer.fit` on the same batches: (steady-state steps/s, whole-fit steps/s)."""
    module = DiffusionFineTuner(
        make_unet(), DDPMScheduler(num_train_timesteps=1000),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5),
    )  # fmt: skip
    timer = StepTimer(warmup)  # and the non-finite guard that conf/callbacks/default.yaml runs
    trainer = Trainer(
        accelerator=device, devices=1, max_steps=len(batches), logger=False,
        callbacks=[timer, NonFiniteGuard()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    data = [{"images": b, "skipped": []} for b in batches]
    loader = DataLoader(data, batch_size=None)
    start = time.perf_counter()
    trainer.fit(module, loader)
    whole = len(batches) / (time.perf_counter() - start)
    return (len(batches) - warmup) / timer.seconds, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, 32, 32)
    batches = [torch.rand(shape, generator=g) * 2 - 1 for _ in range(args.steps)]
    best = {"article": 0.0, "lightning": 0.0, "lightning_whole": 0.0}
    for _ in range(args.rounds):
        best["article"] = max(best["article"], article_loop(batches, args.device, args.warmup))
        steady, whole = lightning_fit(batches, args.device, args.warmup)
        best["lightning"] = max(best["lightning"], steady)
        best["lightning_whole"] = max(best["lightning_whole"], whole)
    print(f"{args.device}, batch {args.batch_size}, {args.steps} steps, best of {args.rounds}")
    print(f"article loop  {best['article']:.2f} steps/s")
    print(f"Trainer.fit   {best['lightning']:.2f} steps/s steady state")
    print(f"Trainer.fit   {best['lightning_whole']:.2f} steps/s whole fit, setup included")
    flops = step_flops(args.batch_size, args.device)
    print(f"one training step {flops / 1e9:.2f} GFLOP (forward + backward, measure_flops)")
    print(f"ratio {best['lightning'] / best['article']:.3f}")


if __name__ == "__main__":
    main()
