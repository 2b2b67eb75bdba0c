"""Rebuild the README pictures in docs/ from a default training run and two sampling runs.

python train.py hydra.run.dir=outputs/readme/train
python sample.py hydra.run.dir=outputs/readme/unguided
python sample.py guidance=color hydra.run.dir=outputs/readme/color
python scripts/readme_figures.py outputs/readme
"""

import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw


def side_by_side(
    left: Path, right: Path, labels: tuple[str, str], out: Path, scale: int = 3
) -> None:
    """Two grids next to each other, upscaled (nearest) and labelled above."""
    a, b = (Image.open(p).convert("RGB") for p in (left, right))
    a, b = (im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in (a, b))
    gap, top = 24, 28
    canvas = Image.new("RGB", (a.width + gap + b.width, top + max(a.height, b.height)), "white")
    canvas.paste(a, (0, top))
    canvas.paste(b, (a.width + gap, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 8), labels[0], fill="black")
    draw.text((a.width + gap + 4, 8), labels[1], fill="black")
    canvas.save(out)


def main(root: Path) -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    docs.mkdir(exist_ok=True)
    samples = sorted((root / "train" / "samples").glob("step_*.png"))
    side_by_side(
        samples[0], samples[-1],
        ("step 0: the base (synthetic 'photo')", f"{samples[-1].stem}: fine-tuned on 'vintage'"),
        docs / "default_samples.png",
    )  # fmt: skip
    shutil.copy(root / "train" / "loss_curve.png", docs / "default_loss_curve.png")
    side_by_side(
        root / "unguided" / "grid.png", root / "color" / "grid.png",
        ("unguided", "colour guidance (0.8, 0.4, 0.6), scale 40"), docs / "color_guidance.png",
    )  # fmt: skip
    shutil.copy(root / "color" / "progression.png", docs / "progression.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
