"""diffusers' `train_unconditional.py` loop on one GPU, as `bench/gpu_train.py --peer`'s peer.

The Accelerate loop of diffusers' examples/unconditional_image_generation/train_unconditional.py
(its documented defaults: AdamW betas (0.95, 0.999), weight decay 1e-6, eps 1e-8, cosine lr with
500 warm-up steps, gradient clipping at 1.0, the MSE step, a tqdm bar with the loss each step),
`mixed_precision="bf16"`, on the celebahq-256 architecture (random weights) and a folder of
JPEGs through the example's torchvision transforms. The example reads the folder with `datasets`;
this reads the same files with PIL in a plain Dataset (the GPU image has no `datasets`), with the
same number of DataLoader workers and pinned memory as train.py gets, so the loop is what differs.
Prints `peer steady N steps T s peak G GiB` (T from step `--warmup` to the end, GPU synchronised).
    python bench/gpu_peer.py --data-dir DIR [--size 256] [--batch-size 32] [--steps 60]
"""

import argparse
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from peer_train import example_transforms, train_unconditional_loop
from PIL import Image

CELEBAHQ_256 = dict(
    in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)  # fmt: skip
SMOKE = dict(block_out_channels=(32, 32, 64, 64, 64, 64), norm_num_groups=16)  # CPU size


def _write_jpeg(job: tuple[Path, int, int]) -> None:
    path, size, seed = job
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0.0, 6.0, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_jpegs(folder: Path, count: int, size: int, processes: int = 8) -> None:
    """`count` size×size RGB JPEGs (quality 90) of smooth colour fields with noise."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"photo_{i:05d}.jpg", size, i) for i in range(count)]
    with Pool(processes) as pool:
        pool.map(_write_jpeg, jobs)


class JpegFolder(torch.utils.data.Dataset):
    """The folder's JPEGs through the example's transforms, as {"input": tensor}."""

    def __init__(self, folder: str, size: int) -> None:
        self.paths = sorted(Path(folder).glob("*.jpg"))
        self.augmentations = example_transforms(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with Image.open(self.paths[index]) as image:
            return {"input": self.augmentations(image.convert("RGB"))}


def main() -> None:
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no")
    torch.manual_seed(0)
    model = UNet2DModel(**dict(CELEBAHQ_256, **({} if cuda else SMOKE)), sample_size=args.size)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    loader = torch.utils.data.DataLoader(
        JpegFolder(args.data_dir, args.size), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, pin_memory=cuda, drop_last=True,
        persistent_workers=args.workers > 0,
    )  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = train_unconditional_loop(
        accelerator, model, noise_scheduler, optimizer, loader, args.steps, args.warmup
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    print(f"peer steady {args.steps - args.warmup} steps {seconds:.4f} s peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
