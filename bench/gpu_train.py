"""Fine-tuning throughput of the ddpm-celebahq-256 architecture (random weights), lever by lever.

Default mode: `Trainer.fit` of `DiffusionFineTuner` at 256 px, batch 32, bf16, one row per
throughput lever and the levers together: images/s, TFLOP/s (model FLOPs by Lightning's
`measure_flops`, recomputation not counted), MFU, peak memory allocated and reserved, and the mean
loss of the timed steps (same weights, data and draws in every row: a lever that changes the
numbers shows there). Rows with gradient checkpointing and the 24 GiB recipe (batch 16 x 2
accumulation) give the memory levers. Goal on one H100: >= 150 images/s at 256 px.

`--peer`: `python train.py hardware=gpu` on a folder of `--images` real-size JPEGs against
diffusers' train_unconditional.py Accelerate loop (bench/gpu_peer.py) with the same UNet, batch,
precision and data workers, each in its own process; steady images/s from step `--warmup` to the
last (train.py: the timestamps of its progress lines, which wait for the GPU; the peer: its
clock). `hardware=gpu` compiles the UNet (`model.compile=true`); each `--variants` string adds a
train.py run with those overrides (`"model.channels_last=true"`, `"model.compile=false"`). Each
train.py row gives its whole process's wall time too (imports and the compile build included).
The last line is the ratio of the plain `train.py hardware=gpu` run.
On a CPU both modes run a smoke size (tiny UNet, 32 px, float32) so the script stays tested.
    python bench/gpu_train.py [--size 256] [--batch-size 32] [--steps 16] [--compile] [--rows all]
    python bench/gpu_train.py --peer [--images 512] [--jpeg-size 1024] [--steps 60] [--variants ...]
"""

import argparse
import csv
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from gpu_peer import CELEBAHQ_256, SMOKE, write_jpegs
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch import Callback, Trainer
from peer_train import PROGRESS_LINE, train_py_steady
from torch.utils.data import DataLoader

from difftune.core.module import DiffusionFineTuner

REPO = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks
ALL = dict(tf32=True)  # hardware=gpu's levers (channels_last and fused AdamW measured no gain)
ROWS = {  # name: (levers, batch size divisor, accumulation)
    "baseline (torch defaults, sdpa)": ({}, 1, 1),
    "+ cudnn.benchmark": (dict(benchmark=True), 1, 1),
    "+ channels_last": (dict(channels_last=True), 1, 1),
    "+ fused AdamW": (dict(fused=True), 1, 1),
    "+ TF32 matmuls": (dict(tf32=True), 1, 1),
    "attention classic (not sdpa)": (dict(attention="classic"), 1, 1),
    "all: hardware=gpu levers": (ALL, 1, 1),
    "all + gradient checkpointing": (dict(ALL, checkpointing=True), 1, 1),
    "24 GiB recipe: batch 16 x 2, ckpt": (dict(ALL, checkpointing=True), 2, 2),
}
COMPILE_ROWS = {  # --compile: inductor may prefer NHWC convolutions that eager GroupNorm made slow
    "all + compile": (dict(ALL, compile=True), 1, 1),
    "all + channels_last + compile": (dict(ALL, compile=True, channels_last=True), 1, 1),
    "24 GiB recipe + compile": (dict(ALL, checkpointing=True, compile=True), 2, 2),
}
CELEBAHQ_CLI = [
    "model=scratch", "model.unet.layers_per_block=2",
    "model.unet.block_out_channels=[128,128,256,256,512,512]",
    "model.unet.down_block_types=[DownBlock2D,DownBlock2D,DownBlock2D,DownBlock2D,AttnDownBlock2D,DownBlock2D]",
    "model.unet.up_block_types=[UpBlock2D,AttnUpBlock2D,UpBlock2D,UpBlock2D,UpBlock2D,UpBlock2D]",
]  # fmt: skip
SMOKE_CLI = ["model.unet.block_out_channels=[32,32,64,64,64,64]", "+model.unet.norm_num_groups=16"]


class Profile(Callback):
    """torch.profiler over the (up to 3) micro-batches before the timed ones, counted across
    epochs: their wall time, the share of it the GPU was busy, and the top operators. Also in a
    train.py run: `+callbacks.profile._target_=gpu_train.Profile +callbacks.profile.warmup=20`."""

    def __init__(self, warmup: int) -> None:
        self.start = max(1, warmup - 3)  # after step 0's compile
        self.stop = max(self.start, warmup - 1)
        self.batches = -1
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches == self.start:
            sync()
            self.started = time.perf_counter()
            self.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.batches != self.stop:
            return
        sync()
        wall_ms = (time.perf_counter() - self.started) * 1e3
        self.profiler.stop()
        on = "device" if torch.cuda.is_available() else "cpu"
        table = self.profiler.key_averages().table(
            sort_by=f"self_{on}_time_total", row_limit=25, max_name_column_width=60
        )
        busy = re.search(r"Self CUDA time total: ([\d.]+)(m?s)", table)
        busy_ms = float(busy[1]) * (1.0 if busy[2] == "ms" else 1e3) if busy else None
        share = f", the GPU busy {busy_ms:.0f} ms ({busy_ms / wall_ms:.0%})" if busy_ms else ""
        steps = self.stop - self.start + 1
        print(f"profile of {steps} steps: {wall_ms:.0f} ms{share}; the top operators by self "
              f"{on} time:\n{table}", flush=True)  # fmt: skip


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Meter(Callback):
    """Wall time of the steps after `warmup` (GPU synchronised at both ends) and their losses."""

    def __init__(self, warmup: int, accumulate: int) -> None:
        self.warmup, self.accumulate = warmup, accumulate
        self.losses: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.losses.append(outputs["loss"].detach() * self.accumulate)  # Lightning's is /N

    def on_train_end(self, trainer, pl_module) -> None:
        sync()
        self.seconds = time.perf_counter() - self.start


def unet_config(size: int, device: str) -> dict:
    return dict(CELEBAHQ_256, sample_size=size, **(SMOKE if device == "cpu" else {}))


def flops_per_image(size: int, device: str) -> float:
    """Model FLOPs of one forward + backward pass of one image (Lightning's `measure_flops`)."""
    with torch.device("meta"):
        unet = UNet2DModel(**unet_config(size, device))
        x, t = torch.randn(2, 3, size, size), torch.randint(0, 1000, (2,))
    return measure_flops(unet, lambda: unet(x, t).sample, lambda y: y.sum()) / 2


def set_tf32(on: bool) -> None:
    torch.set_float32_matmul_precision("high" if on else "highest")


def run_row(levers: dict, batch_size: int, accumulate: int, args, device: str) -> dict:
    """One `Trainer.fit` with the levers; images/s after the warm-up steps."""
    torch.backends.cudnn.benchmark = bool(levers.get("benchmark"))
    set_tf32(bool(levers.get("tf32")))
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config(args.size, device))
    fused = True if levers.get("fused") else None
    module = DiffusionFineTuner(
        unet, DDPMScheduler(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5, fused=fused),
        gradient_checkpointing=bool(levers.get("checkpointing")),
        channels_last=bool(levers.get("channels_last")), compile=bool(levers.get("compile")),
        attention=levers.get("attention", "sdpa"),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.steps * accumulate, batch_size, 3, args.size, args.size,
                         generator=generator)  # fmt: skip
    data = [{"images": x, "skipped": []} for x in images]
    meter = Meter(args.warmup * accumulate, accumulate)
    profiled = args.profile and args.warmup * accumulate >= 2
    callbacks = [meter, Profile(args.warmup * accumulate)] if profiled else [meter]
    trainer = Trainer(
        accelerator=device, devices=1, precision=args.precision, max_steps=args.steps,
        accumulate_grad_batches=accumulate, logger=False, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, benchmark=bool(levers.get("benchmark")),
    )  # fmt: skip
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, DataLoader(data, batch_size=None, pin_memory=device == "cuda"))
    timed_images = (args.steps - args.warmup) * accumulate * batch_size
    cuda = device == "cuda"
    return {
        "images_per_s": timed_images / meter.seconds,
        "loss": torch.stack(meter.losses).float().mean().item(),
        "peak": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "reserved": torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0,
    }


def levers_mode(args, device: str) -> None:
    flops = flops_per_image(args.size, device)
    name = torch.cuda.get_device_name() if device == "cuda" else ""
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    candidates = dict(ROWS, **(COMPILE_ROWS if args.compile else {}))
    rows = {k: v for k, v in candidates.items() if not args.rows or any(r in k for r in args.rows)}
    print(f"{'row':36} {'batch':>7} {'images/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak GiB':>8} {'reserved':>8} {'loss':>8}")  # fmt: skip
    results = {}
    for row, (levers, divisor, accumulate) in rows.items():
        r = run_row(levers, args.batch_size // divisor, accumulate, args, device)
        results[row] = r
        tflops = flops * r["images_per_s"] / 1e12
        mfu = f"{tflops / peak:.1%}" if peak else "-"
        batch = f"{args.batch_size // divisor}x{accumulate}"
        print(f"{row:36} {batch:>7} {r['images_per_s']:9.1f} {tflops:8.1f} {mfu:>6} "
              f"{r['peak']:8.2f} {r['reserved']:8.2f} {r['loss']:8.5f}", flush=True)  # fmt: skip
    best = max(results, key=lambda k: results[k]["images_per_s"])
    base = results.get("baseline (torch defaults, sdpa)", results[best])["images_per_s"]
    print(f"images/s at {args.size} px: best {results[best]['images_per_s']:.1f} ({best}), "
          f"{results[best]['images_per_s'] / base:.2f}x the baseline")  # fmt: skip


class TrainPyError(Exception):
    """A train.py run that exited non-zero: its exit status and the end of its output."""


def train_py(data_dir: Path, run_dir: Path, args, device: str, extra: list[str]) -> tuple:
    """images/s (steady, data loading included), peak GiB and wall seconds of one `python
    train.py` run; TrainPyError when it fails."""
    every = math.gcd(args.warmup, args.steps)
    command = [
        sys.executable, str(REPO / "train.py"), *CELEBAHQ_CLI,
        *(["hardware=gpu"] if device == "cuda" else ["hardware=cpu", *SMOKE_CLI]),
        "data=imagefolder", f"data.data_dir={data_dir}", f"data.image_size={args.size}",
        f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
        "data.val_size=4", f"trainer.max_steps={args.steps}", "callbacks.sample_grid=null",
        "callbacks.loss_curve=null", "callbacks.final_checkpoint=null", "export_dir=null",
        "callbacks.model_checkpoint=null", f"callbacks.progress.every_n_steps={every}",
        f"callbacks.throughput.every_n_steps={every}", f"trainer.log_every_n_steps={every}",
        "trainer.val_check_interval=100000",
        f"hydra.run.dir={run_dir}", f"resume_dir={run_dir.parent / 'resume'}", *extra,
    ]  # fmt: skip
    if args.profile:  # gpu_train.Profile (from bench/) over steps that end before the progress
        # line of step `warmup`, where the timing starts (at a CPU smoke size: inside it)
        command += ["+callbacks.profile._target_=gpu_train.Profile",
                    f"+callbacks.profile.warmup={args.warmup - 1}"]  # fmt: skip
    path = os.pathsep.join([str(REPO / "bench"), os.environ.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=path))  # fmt: skip
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        (args.logs / f"{run_dir.name}.log").write_text(f"{' '.join(command)}\n{output}")
    if done.returncode:
        raise TrainPyError(f"exited {done.returncode}:\n{output[-3000:]}")
    steps_per_s = train_py_steady(output, args.warmup, args.steps)
    with open(run_dir / "metrics.csv") as f:
        peaks = [float(r["perf/peak_memory_mb"]) for r in csv.DictReader(f)
                 if r.get("perf/peak_memory_mb")]  # fmt: skip
    profiled = re.search(r"^profile of \d+ steps: [^;]*", output, re.M)
    summary = intervals(output, args) + (f"\n  {profiled[0]}" if profiled else "")
    return steps_per_s * args.batch_size, max(peaks) / 1024, wall, summary


def intervals(output: str, args) -> str:
    """images/s between consecutive progress lines after the warm-up: an epoch's first batch
    (the workers start again) or its short last one (eager under compile) shows as a dip."""
    stamps = sorted((int(step), datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"))
                    for stamp, step in PROGRESS_LINE.findall(output))  # fmt: skip
    rates = [
        (b - a) * args.batch_size / (tb - ta).total_seconds()
        for (a, ta), (b, tb) in zip(stamps, stamps[1:], strict=False)
        if a >= args.warmup
    ]
    return " ".join(f"{rate:.1f}" for rate in rates)


def peer(data_dir: Path, args) -> tuple[float, float]:
    command = [
        sys.executable, str(REPO / "bench" / "gpu_peer.py"), f"--data-dir={data_dir}",
        f"--size={args.size}", f"--batch-size={args.batch_size}", f"--steps={args.steps}",
        f"--warmup={args.warmup}", f"--workers={args.workers}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    output = done.stdout + done.stderr
    line = [x for x in output.splitlines() if x.startswith("peer steady")]
    if done.returncode or not line:
        sys.exit(f"bench/gpu_peer.py exited {done.returncode}:\n{output[-3000:]}")
    _, _, steps, _, seconds, _, _, peak, _ = line[0].split()
    return int(steps) * args.batch_size / float(seconds), float(peak)


def peer_mode(args, device: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "jpegs"
        start = time.perf_counter()
        write_jpegs(data_dir, args.images, args.jpeg_size)
        print(f"{args.images} JPEGs of {args.jpeg_size} px written in "
              f"{time.perf_counter() - start:.1f} s; {args.size} px, batch {args.batch_size}, "
              f"{args.workers} workers, {args.steps} steps, timed after {args.warmup}")  # fmt: skip
        rows = {"diffusers train_unconditional.py loop (Accelerate)": peer(data_dir, args)}
        print(f"{'peer':52} {rows[next(iter(rows))][0]:8.1f} images/s  "
              f"peak {rows[next(iter(rows))][1]:.2f} GiB", flush=True)  # fmt: skip
        plain = f"train.py hardware={'gpu' if device == 'cuda' else 'cpu'}"
        runs = {plain: [], **{f"{plain} {v}": v.split() for v in args.variants}}
        for i, (name, extra) in enumerate(runs.items()):
            try:
                rows[name] = train_py(data_dir, Path(tmp) / f"run{i}", args, device, extra)
            except TrainPyError as failed:  # a variant's failure leaves the others their time
                if not extra:
                    sys.exit(f"{name} {failed}")
                print(f"{name:52} failed: {failed}", flush=True)
                continue
            print(f"{name:52} {rows[name][0]:8.1f} images/s  peak {rows[name][1]:.2f} GiB  "
                  f"process {rows[name][2]:.0f} s\n  images/s per progress interval: "
                  f"{rows[name][3]}", flush=True)  # fmt: skip
    ours, theirs = rows[plain][0], rows[next(iter(rows))][0]
    print(f"ratio train.py/peer images/s: {ours / theirs:.2f} (train.py {ours:.1f} images/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--peer", action="store_true")
    parser.add_argument("--compile", action="store_true", help="rows: add the compiled rows")
    parser.add_argument("--variants", nargs="*", default=[],
                        help="--peer: a train.py run per string of overrides")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="the top operators of the steps before the timed (--peer: in the "
                             "train.py runs' logs)")  # fmt: skip
    parser.add_argument("--logs", type=Path, help="--peer: write each train.py run's output here")
    parser.add_argument("--rows", nargs="+", help="only the rows whose name contains one of these")
    parser.add_argument("--size", type=int, default=256 if cuda else 32)
    parser.add_argument("--batch-size", type=int, default=32 if cuda else 4)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--images", type=int, default=512 if cuda else 16)
    parser.add_argument("--jpeg-size", type=int, default=1024 if cuda else 96)
    parser.add_argument("--workers", type=int, default=8 if cuda else 0)
    parser.add_argument("--precision", default="bf16-mixed" if cuda else "32-true")
    args = parser.parse_args()
    default_steps = (60, 20) if args.peer else (16, 6)
    args.steps = args.steps or (default_steps[0] if cuda else 4)
    args.warmup = args.warmup or (default_steps[1] if cuda else 2)
    device = "cuda" if cuda else "cpu"
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no per-row banners
    name = torch.cuda.get_device_name() if cuda else "CPU (smoke size, not the real model)"
    print(f"{name}, torch {torch.__version__}, {args.precision}, {args.size} px")
    peer_mode(args, device) if args.peer else levers_mode(args, device)


if __name__ == "__main__":
    main()
