"""Seconds of guided sampling divided by unguided sampling (same UNet, batch, steps, noise).

Also the article's colour and CLIP loops for comparison (tests/helpers/article_loops.py).
Interleaved rounds, best of each. Goals: colour x̂0-only <= 1.15, colour through the UNet <= 2.2
(the article's loop ~1.8), CLIP n_cuts=4 batched / the article's sequential cuts <= 1.0. The last
line is the key ratio (colour, gradient through the x̂0 formula only).
    python bench/guidance_cost.py [--device cpu] [--steps 5] [--rounds 3] [--threads N]
    python bench/guidance_cost.py --device cuda --peak-memory   # ddpm-celebahq-256 UNet, batch 4
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import open_clip
import torch
from diffusers import DDIMScheduler, UNet2DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from difftune.core.sampling import sample  # noqa: E402
from difftune.guidance import ClipLoss, ColorLoss, Guidance  # noqa: E402
from helpers.article_loops import article_clip_loop, article_color_loop, article_tfms  # noqa: E402

BENCH_CLIP = "difftune-bench-clip"  # ViT-B-32 with 4 of its 12 layers (random weights)


def make_unet(size: int = 64) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size, block_out_channels=(64, 128, 128, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def make_celebahq_unet() -> UNet2DModel:
    """The google/ddpm-celebahq-256 architecture, random weights."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                          "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D",
                        "UpBlock2D"),
    )  # fmt: skip


def make_clip(name: str, device: str) -> torch.nn.Module:
    if name == BENCH_CLIP:
        cfg = open_clip.get_model_config("ViT-B-32")
        cfg["vision_cfg"]["layers"] = 4
        cfg["text_cfg"]["layers"] = 4
        open_clip.factory._MODEL_CONFIGS[BENCH_CLIP] = cfg
    torch.manual_seed(0)
    return open_clip.create_model(name, device=device).eval().requires_grad_(False)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def scheduler() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, clip_sample=True)  # the article's scheduler


def run_timings(args: argparse.Namespace) -> None:
    dev = args.device
    unet = make_unet(args.size).to(dev)
    noise = torch.randn(
        args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
    )
    noise = noise.to(dev)
    clip_model = make_clip(args.clip_model, dev)
    prompt = "Red Rose, red flower painting"
    clip_loss = ClipLoss(prompt, model_name=args.clip_model, n_cuts=4, model=clip_model)
    with torch.no_grad():
        text_features = clip_model.encode_text(open_clip.tokenize([prompt]).to(dev))
    tfms = article_tfms(clip_loss.cutouts.transforms[0].size)
    steps = args.steps
    color = ColorLoss((0.8, 0.4, 0.6))
    runs = {
        "unguided": lambda: sample(unet, scheduler(), noise, steps),
        "colour x0-only": lambda: sample(unet, scheduler(), noise, steps, Guidance(color, 40.0)),
        "colour through UNet": lambda: sample(
            unet, scheduler(), noise, steps, Guidance(color, 40.0, through_unet=True)
        ),
        "article colour loop": lambda: article_color_loop(unet, scheduler(), noise, 40, steps),
        "clip batched (ours)": lambda: sample(
            unet, scheduler(), noise, steps, Guidance(clip_loss, 8.0, schedule="sqrt_alpha_bar")
        ),
        "article clip loop": lambda: article_clip_loop(
            unet, scheduler(), noise, clip_model, tfms, text_features, 8, 4, steps
        ),
    }
    best = dict.fromkeys(runs, float("inf"))
    for fn in runs.values():  # warm-up
        torch.manual_seed(0)
        fn()
    for _ in range(args.rounds):
        for name, fn in runs.items():
            torch.manual_seed(0)
            best[name] = min(best[name], timed(fn, dev))
    print(
        f"device={dev} threads={torch.get_num_threads()} unet={args.size}px batch={args.batch} "
        f"steps={steps} clip={args.clip_model} (random weights) rounds={args.rounds}"
    )
    for name, seconds in best.items():
        print(f"  {name:22s} {seconds:8.3f} s")
    base = best["unguided"]
    print(f"article colour loop / unguided:       {best['article colour loop'] / base:.2f}")
    through = best["colour through UNet"] / base
    print(f"colour through UNet / unguided:       {through:.2f} (goal <= 2.2)")
    print(
        f"clip n_cuts=4 batched / article clip: "
        f"{best['clip batched (ours)'] / best['article clip loop']:.2f} (goal <= 1.0)"
    )
    cheap = best["colour x0-only"] / base
    print(f"colour x0-only / unguided:            {cheap:.2f} (goal <= 1.15)")


def run_peak_memory(args: argparse.Namespace) -> None:
    """Peak CUDA memory of colour guidance through the UNet, ddpm-celebahq-256, batch 4."""
    dev = args.device
    unet = make_celebahq_unet().to(dev)
    noise = torch.randn(4, 3, 256, 256, device=dev)
    color = ColorLoss((0.8, 0.4, 0.6))
    runs = {
        "unguided": lambda: sample(unet, scheduler(), noise, 3),
        "colour x0-only": lambda: sample(unet, scheduler(), noise, 3, Guidance(color, 40.0)),
        "colour through UNet": lambda: sample(
            unet, scheduler(), noise, 3, Guidance(color, 40.0, through_unet=True)
        ),
        "article colour loop": lambda: article_color_loop(unet, scheduler(), noise, 40, 3),
    }
    for name, fn in runs.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(fn, dev)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"  {name:22s} peak {peak:6.2f} GiB  ({seconds / 3:.3f} s/step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--clip-model", default=BENCH_CLIP, help=f"open_clip name ({BENCH_CLIP})")
    parser.add_argument("--peak-memory", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.peak_memory:
        if not args.device.startswith("cuda"):
            parser.error("--peak-memory needs --device cuda")
        run_peak_memory(args)
    else:
        run_timings(args)


if __name__ == "__main__":
    main()
