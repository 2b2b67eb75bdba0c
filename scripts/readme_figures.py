"""Copy the README pictures into docs/, as the runs wrote them (nothing composed here).

python train.py hydra.run.dir=outputs/readme/train
python sample.py guidance=color hydra.run.dir=outputs/readme/color
python train.py experiment=conditional hydra.run.dir=outputs/readme/conditional
pytest tests/demo/test_browser.py -k colour --basetemp=outputs/readme/browser   # the page, shot
python scripts/readme_figures.py outputs/readme
"""

import shutil
import sys
from pathlib import Path


def main(root: Path) -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    docs.mkdir(exist_ok=True)
    samples = sorted((root / "train" / "samples").glob("step_*.png"))
    shutil.copy(samples[0], docs / "default_samples_first.png")
    shutil.copy(samples[-1], docs / "default_samples_last.png")
    shutil.copy(root / "train" / "loss_curve.png", docs / "default_loss_curve.png")
    shutil.copy(root / "color" / "comparison.png", docs / "color_guidance.png")
    shutil.copy(root / "color" / "progression.png", docs / "progression.png")
    conditional = sorted((root / "conditional" / "samples").glob("step_*.png"))
    shutil.copy(conditional[0], docs / "conditional_samples_first.png")
    shutil.copy(conditional[-1], docs / "conditional_samples_last.png")
    (page,) = [p for p in (root / "browser").glob("test_picking_a_colour*/demo.png")
               if not p.parent.is_symlink()]  # pytest's `...current` link  # fmt: skip
    shutil.copy(page, docs / "demo_page.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
