"""DDIM sampling speed of `difftune.sampling.sample` against diffusers' own `DDIMPipeline`.

The ddpm-celebahq-256 architecture with random weights, the article's scheduler (DDIM from the
DDPM config, clip_sample=True), DDIM 40 steps at 256 px, batch 64, the same x_T for every row:
images/s (best of the timed runs after one untimed warm-up run of `--warmup-steps` steps, which
picks the kernels, allocates and compiles), seconds a run and peak GPU memory (weights included)
of `DDIMPipeline` in float32 and under bf16 autocast, of `sample()` in float32 and bf16 autocast
(+ channels_last with `--channels-last`, + torch.compile with `--compile`), and of colour
guidance (x̂0-only and through the UNet, batch `--guided-batch`; `--no-guided` leaves them out).
Every run includes the pipeline's postprocessing to [0, 1] numpy.
Float32 is torch's default (cuDNN convolutions in TF32, matmuls in float32), as a user runs
DDIMPipeline, and `sample()` in float32 is the equivalence reference. A faster setting counts only
where one UNet call on x_T at t=500 stays within `--tolerance` (0.02) relative L2 error of the
float32 ε̂: the final images are no test of that with random weights, where 40 clipped DDIM steps
amplify any rounding (on a CPU a 1e-6 change of x_T moves 32 px images by up to 0.8), so their
max and mean |Δ| in [0, 1] pixels against float32 (guided rows: against the float32 row of the
same guidance) are reported, not judged.
The last line is the unguided speed-up of the fastest such `sample()` row over `DDIMPipeline`
float32 (goal >= 1.3), and over `DDIMPipeline` under bf16 autocast. On a CPU it runs a tiny smoke
size (32 px, batch 2, 4 steps) so the script itself stays tested.
    python bench/gpu_sample.py [--size 256] [--batch 64] [--steps 40] [--guided-batch 16]
    python bench/gpu_sample.py --compile [--channels-last] [--no-guided] [--tolerance 0.02]
"""

import argparse
import copy
import time
from collections.abc import Callable
from contextlib import nullcontext

import diffusers
import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from gpu_peer import CELEBAHQ_256, SMOKE

from difftune.core.sampling import sample
from difftune.guidance.color import ColorLoss
from difftune.guidance.guide import Guidance

COLOR_SCALE = 40.0  # conf/guidance/color.yaml


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """`DDIMPipeline`'s postprocessing for output_type="np": [-1, 1] -> [0, 1], NHWC on the CPU."""
    return (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()


def measure(
    run: Callable[[int], np.ndarray], steps: int, warmup_steps: int, repeats: int, device: str
) -> tuple[float, float, np.ndarray]:
    """(best seconds of `repeats` timed runs, their peak GiB, the last images), after a warm-up."""
    cuda = device == "cuda"
    run(warmup_steps)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        images = run(steps)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return best, peak, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--size", type=int, default=256 if cuda else 32)
    parser.add_argument("--batch", type=int, default=64 if cuda else 2)
    parser.add_argument("--steps", type=int, default=40 if cuda else 4)
    parser.add_argument("--guided-batch", type=int, default=8 if cuda else 2)
    parser.add_argument("--repeats", type=int, default=1 if cuda else 2)  # fp32 runs ~30 s there
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-guided", dest="guided", action="store_false")
    args = parser.parse_args()
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if cuda else "CPU (smoke size, not the real model)"
    print(f"{name}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    print(
        f"DDIM {args.steps} steps at {args.size} px, batch {args.batch} (guided "
        f"{args.guided_batch}), float32 as torch defaults it, tolerance {args.tolerance:g} on "
        "one UNet call's relative error"
    )

    torch.manual_seed(0)
    config = dict(CELEBAHQ_256, sample_size=args.size)
    if not cuda:  # smoke size: same code path, a network small enough for a CPU
        config.update(SMOKE)
    unet = UNet2DModel(**config).to(device).eval()
    ddpm = DDPMScheduler(num_train_timesteps=1000, clip_sample=True)
    scheduler = DDIMScheduler.from_config(ddpm.config)
    pipe = DDIMPipeline(unet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    shape = (args.batch, unet.config.in_channels, args.size, args.size)
    generator = torch.Generator(device).manual_seed(0)  # x_T drawn as DDIMPipeline draws it
    noise = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=unet.dtype)
    bf16 = torch.autocast(device, torch.bfloat16)
    nhwc = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    nhwc_noise = noise.to(memory_format=torch.channels_last)

    def pipeline(autocast) -> Callable[[int], np.ndarray]:
        def run(steps: int) -> np.ndarray:
            with autocast:
                out = pipe(
                    batch_size=args.batch, num_inference_steps=steps, output_type="np", eta=0.0,
                    generator=torch.Generator(device).manual_seed(0),
                )  # fmt: skip
            return out.images

        return run

    def difftune(model, x_start, autocast, guidance=None) -> Callable[[int], np.ndarray]:
        def run(steps: int) -> np.ndarray:
            with autocast:
                return to_numpy(sample(model, scheduler, x_start, steps, guidance=guidance))

        return run

    head = f"{'row':<44}{'batch':>6}{'images/s':>10}{'s/run':>8}{'peak GiB':>10}"
    print(f"{head}  max|Δ| (mean|Δ|) vs fp32  1-call rel. error", flush=True)
    speed: dict[str, float] = {}  # row -> images/s
    error: dict[str, float] = {}  # row -> relative L2 error of one UNet call against float32
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        eps_ref = unet(noise, t).sample.float()

    def one_call_error(model, x_start, autocast) -> float:
        """‖ε̂ − ε̂_fp32‖ / ‖ε̂_fp32‖ of one UNet call on x_T at t=500."""
        with torch.no_grad(), autocast:
            eps = model(x_start, t).sample.float()
        return float((eps - eps_ref).norm() / eps_ref.norm())

    def row(label, run, batch, ref=None, repeats=args.repeats, call=None) -> np.ndarray:
        seconds, peak, images = measure(run, args.steps, args.warmup_steps, repeats, device)
        speed[label] = batch / seconds
        diff = np.abs(images - ref) if ref is not None else np.zeros(1)
        shown = f"{diff.max():.2e} ({diff.mean():.1e})" if ref is not None else "ref"
        error[label] = one_call_error(*call) if call else 0.0
        line = f"{label:<44}{batch:>6}{speed[label]:>10.2f}{seconds:>8.2f}{peak:>10.2f}"
        print(f"{line}  {shown:<22}  {error[label]:.1e}", flush=True)
        return images

    ref = row("difftune fp32", difftune(unet, noise, nullcontext()), args.batch)
    row("DDIMPipeline fp32", pipeline(nullcontext()), args.batch, ref)
    if cuda:
        row("DDIMPipeline bf16 autocast", pipeline(bf16), args.batch, ref)
    mine = ["difftune fp32", "difftune bf16"]
    row(mine[1], difftune(unet, noise, bf16), args.batch, ref, call=(unet, noise, bf16))
    if args.channels_last:
        mine.append("difftune bf16 + channels_last")
        call = (nhwc, nhwc_noise, bf16)
        row(mine[-1], difftune(nhwc, nhwc_noise, bf16), args.batch, ref, call=call)
    if args.compile:
        mine.append("difftune bf16 + compile")
        compiled = torch.compile(unet)
        call = (compiled, noise, bf16)
        row(mine[-1], difftune(compiled, noise, bf16), args.batch, ref, call=call)

    for through_unet in (False, True) if args.guided else ():  # the UNet one: timed once
        how = "through the UNet" if through_unet else "x̂0-only"
        guidance = Guidance(ColorLoss((0.8, 0.3, 0.1)), COLOR_SCALE, through_unet=through_unet)
        b, repeats = args.guided_batch, 1 if through_unet else args.repeats
        run = difftune(unet, noise[:b], nullcontext(), guidance)
        guided = row(f"colour {how} fp32", run, b, repeats=repeats)
        run = difftune(unet, noise[:b], bf16, guidance)
        row(f"colour {how} bf16", run, b, guided, repeats)

    best = max(speed[m] for m in mine if error[m] <= args.tolerance)
    bf16_ratio = f"{best / speed['DDIMPipeline bf16 autocast']:.2f}" if cuda else "n/a"
    print(
        f"ratio unguided difftune-best/DDIMPipeline-fp32 {best / speed['DDIMPipeline fp32']:.2f} "
        f"(vs DDIMPipeline bf16 autocast {bf16_ratio})"
    )


if __name__ == "__main__":
    main()
