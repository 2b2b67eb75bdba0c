"""`python train.py` against diffusers' `train_unconditional.py` loop: steady steps/s, wall time.

The peer is an Accelerate loop written from diffusers' examples/unconditional_image_generation/
train_unconditional.py (UNet2DModel and DDPMScheduler of the embedded tiny base, AdamW with its
betas/eps/weight decay and train.py's lr, the cosine lr schedule, a torchvision-transformed
`datasets` imagefolder, the MSE step against the scheduler's prediction type, gradient clipping,
a tqdm bar with the loss each step; no tracker, EMA, sample images or saves). Both train on the
same folder of PNGs written here, batch 16, one torch thread, each in its own process, after one
untimed run of each (page cache, the peer's arrow cache); the pairs alternate which runs first.
train.py runs with sample grids, loss curve, last.ckpt and export off (its every-1000-steps
checkpoint never fires). Steady state is the
steps after `--warmup`, timed in each process: train.py by the timestamps of its own `step N/M`
progress lines, the peer by a clock around its loop. Whole is process start to exit, timed here.
Medians of the pairs are printed, then last `ratio steady X whole Y` (difftune/peer steps/s, goal
>= 1.0; difftune/peer wall time, goal <= 1.05).
    python bench/peer_train.py [--pairs 3] [--steps 64] [--images 256] [--warmup 8]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE, BATCH_SIZE = 32, 16
# Hydra's job log format: `[2026-11-26 05:04:58,123][difftune...][INFO] - step 8/64 loss ...`
PROGRESS_LINE = re.compile(r"^\[([\d-]+ [\d:]+,\d{3})\]\[[^\]]*\]\[INFO\] - step (\d+)/\d+ ", re.M)
PEER_LINE = re.compile(r"^peer steady (\d+) steps ([\d.]+) s$", re.M)


def write_pngs(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """Write `count` size×size RGB PNGs of smooth colour fields with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float64)
        pixels = np.clip(smooth + rng.normal(0.0, 8.0, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{i:04d}.png")


def train_py_command(data_dir: Path, run_dir: Path, steps: int, every: int) -> list[str]:
    """train.py on the folder, with the grids, curve, checkpoints and export switched off."""
    return [
        sys.executable, str(REPO / "train.py"),
        "data=imagefolder", f"data.data_dir={data_dir}", f"data.image_size={IMAGE_SIZE}",
        f"data.batch_size={BATCH_SIZE}", "data.num_workers=0", f"trainer.max_steps={steps}",
        "callbacks.sample_grid=null", "callbacks.loss_curve=null",
        "callbacks.final_checkpoint=null", "export_dir=null",  # model_checkpoint: 1000 steps
        f"callbacks.progress.every_n_steps={every}",
        f"hydra.run.dir={run_dir}", f"resume_dir={run_dir.parent / 'resume'}",
    ]  # fmt: skip


def peer_command(
    base: str, data_dir: Path, cache_dir: Path, steps: int, warmup: int, lr: float
) -> list[str]:
    """This script as the peer's worker process."""
    return [
        sys.executable, str(Path(__file__).resolve()), "--peer-worker", f"--base={base}",
        f"--data-dir={data_dir}", f"--cache-dir={cache_dir}", f"--steps={steps}",
        f"--warmup={warmup}", f"--lr={lr}",
    ]  # fmt: skip


def run(command: list[str]) -> tuple[float, str]:
    """Run one process on one thread; its wall time (start to exit) and stdout + stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.setdefault(key, "1")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:2])} exited {done.returncode}:\n{output[-3000:]}")
    return wall, output


def train_py_steady(output: str, warmup: int, steps: int) -> float:
    """Steps/s between train.py's `step {warmup}` and `step {steps}` progress lines."""
    stamps = {
        int(step): datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        for stamp, step in PROGRESS_LINE.findall(output)
    }
    if warmup not in stamps or steps not in stamps:
        sys.exit(f"train.py printed no `step {warmup}` and `step {steps}` lines:\n{output[-3000:]}")
    return (steps - warmup) / (stamps[steps] - stamps[warmup]).total_seconds()


def peer_steady(output: str) -> float:
    """Steps/s from the peer worker's `peer steady N steps T s` line."""
    found = PEER_LINE.search(output)
    if found is None:
        sys.exit(f"the peer printed no `peer steady` line:\n{output[-3000:]}")
    return int(found[1]) / float(found[2])


def example_transforms(size: int):
    """The example's torchvision augmentations: resize, centre crop, flip, to [-1, 1]."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )


def train_unconditional_loop(
    accelerator, model, noise_scheduler, optimizer, loader, steps: int, warmup: int
) -> float:
    """train_unconditional.py's cosine schedule (500 warm-up steps), `accelerator.prepare` and
    training loop for `steps` steps; the seconds from step `warmup` to the end."""
    import torch
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    lr_scheduler = get_scheduler(
        "cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=steps
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(
        model, optimizer, loader, lr_scheduler
    )
    prediction_type = noise_scheduler.config.prediction_type
    global_step, start = 0, time.perf_counter()
    while global_step < steps:
        model.train()
        progress_bar = tqdm(total=len(loader), disable=not accelerator.is_local_main_process)
        for batch in loader:
            clean_images = batch["input"]
            noise = torch.randn(clean_images.shape, device=clean_images.device)
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],),
                device=clean_images.device,
            ).long()  # fmt: skip
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                if prediction_type == "epsilon":
                    target = noise
                elif prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(clean_images, noise, timesteps)
                else:
                    raise ValueError(f"prediction_type={prediction_type!r}: epsilon or v only")
                loss = F.mse_loss(model_output.float(), target.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
            progress_bar.set_postfix(**logs, step=global_step)
            accelerator.log(logs, step=global_step)
            if global_step == warmup:
                start = time.perf_counter()
            if global_step == steps:
                break
        progress_bar.close()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peer_worker(args: argparse.Namespace) -> None:
    """diffusers' train_unconditional.py loop (its documented defaults) for `args.steps` steps."""
    import torch
    from accelerate import Accelerator
    from datasets import load_dataset
    from diffusers import DDPMScheduler, UNet2DModel

    torch.set_num_threads(1)
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    model = UNet2DModel.from_pretrained(args.base, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(args.base, subfolder="scheduler")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    augmentations = example_transforms(IMAGE_SIZE)
    dataset = load_dataset(
        "imagefolder", data_dir=args.data_dir, cache_dir=args.cache_dir, split="train"
    )

    def transform_images(examples: dict) -> dict:
        return {"input": [augmentations(image.convert("RGB")) for image in examples["image"]]}

    dataset.set_transform(transform_images)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0
    )
    seconds = train_unconditional_loop(
        accelerator, model, noise_scheduler, optimizer, loader, args.steps, args.warmup
    )
    accelerator.end_training()
    print(f"peer steady {args.steps - args.warmup} steps {seconds:.4f} s")


def tiny_base_lr() -> float:
    """train.py's learning rate for the tiny base (conf/model/tiny_base.yaml)."""
    from omegaconf import OmegaConf

    return float(OmegaConf.load(REPO / "conf" / "model" / "tiny_base.yaml").optimizer.lr)


def main() -> None:
    """Write the PNGs, run the interleaved pairs, print each run, the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker:
        return peer_worker(args)
    if not 0 < args.warmup < args.steps or args.pairs < 1 or args.images < BATCH_SIZE:
        parser.error(f"need 0 < --warmup < --steps, --pairs >= 1, --images >= {BATCH_SIZE}")
    from importlib.resources import files

    base = str(files("difftune") / "assets" / "tiny_base")
    every = math.gcd(args.warmup, args.steps)
    lr = tiny_base_lr()
    speeds: dict[str, list[float]] = {"difftune": [], "peer": []}
    walls: dict[str, list[float]] = {"difftune": [], "peer": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir, cache_dir = root / "images", root / "hf_cache"
        write_pngs(data_dir, args.images, IMAGE_SIZE)

        def command(name: str, run_id: str, steps: int, warmup: int) -> list[str]:
            if name == "difftune":
                return train_py_command(data_dir, root / "runs" / run_id, steps, every)
            return peer_command(base, data_dir, cache_dir, steps, warmup, lr)

        for name in speeds:  # untimed: page cache, bytecode, the peer's arrow cache
            run(command(name, "untimed", args.warmup + 1, args.warmup))
        for pair in range(args.pairs):
            order = ("difftune", "peer") if pair % 2 == 0 else ("peer", "difftune")
            for name in order:
                wall, output = run(command(name, f"pair{pair}", args.steps, args.warmup))
                if name == "difftune":
                    steady = train_py_steady(output, args.warmup, args.steps)
                else:
                    steady = peer_steady(output)
                speeds[name].append(steady)
                walls[name].append(wall)
                print(f"pair {pair} {name:8} wall {wall:6.2f} s steady {steady:6.3f} steps/s")
    median_speed = {name: statistics.median(v) for name, v in speeds.items()}
    median_wall = {name: statistics.median(v) for name, v in walls.items()}
    print(
        f"{args.images} PNGs {IMAGE_SIZE}px, batch {BATCH_SIZE}, {args.steps} steps "
        f"(steady after {args.warmup}), 1 thread, median of {args.pairs} interleaved pairs"
    )
    for name in speeds:
        print(
            f"{name:8} {median_speed[name]:6.3f} steps/s steady  {median_wall[name]:6.2f} s whole"
        )
    steady_ratio = median_speed["difftune"] / median_speed["peer"]
    whole_ratio = median_wall["difftune"] / median_wall["peer"]
    print(f"ratio steady {steady_ratio:.3f} whole {whole_ratio:.3f}")


if __name__ == "__main__":
    main()
