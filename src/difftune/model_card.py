"""`write_model_card`: a Hugging Face model card (README.md) beside an exported pipeline."""

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml

from difftune.errors import DifftuneError
from difftune.pipeline_io import EMBEDDED

TAGS = ["pytorch", "diffusers", "unconditional-image-generation", "difftune"]
SAMPLES_NAME = "samples.png"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str | None) -> bool:
    """`owner/name` that is not a local path and not one of difftune's embedded models."""
    if not name or name in EMBEDDED or not _HUB_ID.match(name):
        return False
    return not Path(name).exists()


def _front_matter(base_model: str | None, dataset: str | None, license: str | None) -> str:
    meta: dict[str, object] = {"library_name": "diffusers"}
    if license:
        meta["license"] = license
    meta["tags"] = list(TAGS)
    meta["pipeline_tag"] = "unconditional-image-generation"
    if looks_like_hub_id(base_model):
        meta["base_model"] = base_model
    if looks_like_hub_id(dataset):
        meta["datasets"] = [dataset]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _metrics_table(metrics: Mapping[str, float]) -> str:
    if not metrics:
        return "No metrics were logged.\n"
    rows = ["| metric | value |", "|---|---|"]
    for name, value in sorted(metrics.items()):
        rows.append(f"| {str(name).replace('|', '/')} | {float(value):.6g} |")
    return "\n".join(rows) + "\n"


def _copy_grid(sample_grid: Path, pipeline_dir: Path) -> None:
    sample_grid = Path(sample_grid)
    if not sample_grid.is_file():
        raise DifftuneError(f"model card: sample grid {sample_grid} does not exist")
    target = pipeline_dir / SAMPLES_NAME
    if not (target.exists() and target.samefile(sample_grid)):
        shutil.copyfile(sample_grid, target)


def write_model_card(
    pipeline_dir: str | Path,
    *,
    base_model: str | None,
    dataset: str | None,
    steps: int,
    effective_batch: int,
    lr: float,
    precision: str,
    ema: float | None,
    metrics: Mapping[str, float],
    sample_grid: str | Path | None,
    repo_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Write `pipeline_dir/README.md` (and `samples.png`, a copy of `sample_grid`); return it.

    `ema` is the EMA decay, or None when EMA was off. The load snippet names `repo_id` when the
    pipeline is (to be) pushed, else the pipeline's absolute local path. Call it after
    `export_pipeline`: `pipeline_dir` must exist.
    """
    pipeline_dir = Path(pipeline_dir)
    if not pipeline_dir.is_dir():
        raise DifftuneError(f"model card: pipeline dir {pipeline_dir} does not exist")
    if sample_grid is not None:
        _copy_grid(Path(sample_grid), pipeline_dir)
    where = repo_id or str(pipeline_dir.resolve())
    title = repo_id or pipeline_dir.resolve().name
    ema_text = "off" if ema is None else f"on (decay {ema:g})"
    grid = (
        f"![samples]({SAMPLES_NAME})\n"
        if sample_grid is not None
        else "No sample grid was saved with this run.\n"
    )
    body = f"""
# {title}

A diffusers `DDPMPipeline` fine-tuned with difftune (PyTorch Lightning + Hydra).

## Training

| | |
|---|---|
| base model | `{base_model or "none (trained from scratch)"}` |
| dataset | `{dataset or "unknown"}` |
| steps | {int(steps)} |
| effective batch | {int(effective_batch)} |
| learning rate | {float(lr):g} |
| precision | {precision} |
| EMA | {ema_text} |

## Final metrics

{_metrics_table(metrics)}
## Samples

{grid}
## Usage

Load it in three lines of diffusers:

```python
from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained({json.dumps(where)})
image = pipe().images[0]
```
"""
    card = pipeline_dir / "README.md"
    card.write_text(_front_matter(base_model, dataset, license) + body, encoding="utf-8")
    return card
