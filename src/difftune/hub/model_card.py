"""`write_model_card`: a Hugging Face model card (README.md) beside an exported pipeline."""

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from difftune.errors import DifftuneError
from difftune.hub.pipelines import EMBEDDED

UNCONDITIONAL, CONDITIONAL_TAG = "unconditional-image-generation", "class-conditional"
TAGS = ["pytorch", "diffusers", UNCONDITIONAL, "difftune"]
SAMPLES_NAME = "samples.png"


def looks_like_hub_id(name: str | None) -> bool:
    """`owner/name` that is not a local path and not one of difftune's embedded models."""
    if not name or name in EMBEDDED or "/" not in name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def dataset_name(data_cfg: Mapping[str, Any]) -> str:
    """What the model card calls the training data (from a run's `data` config)."""
    if data_cfg.get("source") == "synthetic":
        return f"synthetic '{data_cfg.get('style')}' style (difftune)"
    return str(data_cfg.get("dataset_name") or data_cfg.get("data_dir"))


def describe_base(base_model: str | None) -> str:
    """The base as a card may name it: a hub id or embedded name, else the local dir's name."""
    if not base_model:
        return "none (trained from scratch)"
    if looks_like_hub_id(base_model) or base_model in EMBEDDED:
        return base_model
    return f"a local pipeline ({Path(base_model).name})"  # no absolute path of this machine


def _card_data(
    base_model: str | None, dataset: str | None, license: str | None, conditional: bool = False
) -> ModelCardData:
    """The front matter; a class-conditional model has no Hub pipeline tag (the Hub's
    unconditional widget would call it without labels)."""
    tags = [CONDITIONAL_TAG if t == UNCONDITIONAL else t for t in TAGS] if conditional else TAGS
    return ModelCardData(
        library_name="diffusers",
        license=license or None,
        tags=list(tags),
        pipeline_tag=None if conditional else UNCONDITIONAL,
        base_model=base_model if looks_like_hub_id(base_model) else None,
        datasets=[dataset] if looks_like_hub_id(dataset) else None,
    )


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


def _usage(where: str, class_names: Sequence[str] | None) -> str:
    """How to load and sample it: three lines of diffusers, or a CFG loop for class labels."""
    if class_names is None:
        return f"""## Usage

Load it in three lines of diffusers:

```python
from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained({json.dumps(where)})
image = pipe().images[0]
```
"""
    null = len(class_names)
    rows = "".join(f"| {i} | {name} |\n" for i, name in enumerate(class_names))
    return f"""## Classes

A class-conditional UNet (diffusers' `num_class_embeds`); id {null} is the null label used for
classifier-free guidance (Ho & Salimans 2022).

| id | class |
|---|---|
{rows}
## Usage

`DDPMPipeline()` passes no class labels; sample with labels and classifier-free guidance
(scale `w`; 1 is the plain conditional model) in plain diffusers:

```python
import torch
from diffusers import DDIMScheduler, UNet2DModel

unet = UNet2DModel.from_pretrained({json.dumps(where)}, subfolder="unet").eval()
scheduler = DDIMScheduler.from_pretrained({json.dumps(where)}, subfolder="scheduler")
labels = torch.tensor([0, 0, 0, 0])  # {class_names[0]}
null, w = torch.full_like(labels, {null}), 3.0
size = unet.config.sample_size
x = torch.randn(len(labels), 3, size, size, generator=torch.Generator().manual_seed(0))
scheduler.set_timesteps(40)
for t in scheduler.timesteps:
    with torch.no_grad():
        both = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
    eps_c, eps_u = both.chunk(2)
    x = scheduler.step(eps_u + w * (eps_c - eps_u), t, x).prev_sample
images = (x / 2 + 0.5).clamp(0, 1)
```

or with difftune: `difftune.sampling.sample(unet, scheduler, noise, 40, class_labels=labels,
cfg_scale=3.0)`, or
`python sample.py pretrained=<this dir> class_label={class_names[0]} cfg_scale=3`.
"""


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
    image_size: int | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write `pipeline_dir/README.md` (and `samples.png`, a copy of `sample_grid`); return it.

    `ema` is the EMA decay, or None when EMA was off; `image_size` the training resolution;
    `class_names` those of a class-conditional UNet (the card then lists them and shows how to
    sample with labels: `DDPMPipeline.__call__` passes none).
    The load snippet names `repo_id` when the pipeline is (to be) pushed, else the pipeline's
    absolute local path. Call it after `export_pipeline`: `pipeline_dir` must exist.
    """
    pipeline_dir = Path(pipeline_dir)
    if not pipeline_dir.is_dir():
        raise DifftuneError(f"model card: pipeline dir {pipeline_dir} does not exist")
    if sample_grid is not None:
        _copy_grid(Path(sample_grid), pipeline_dir)
    # the export's link (<run>/pipeline), not the version it points to now, which the next
    # export of the run removes
    local = Path(os.path.abspath(pipeline_dir))
    where = repo_id or str(local)
    title = repo_id or local.name
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
| base model | `{describe_base(base_model)}` |
| dataset | `{dataset or "unknown"}` |
| resolution | {f"{int(image_size)} px" if image_size else "unknown"} |
| steps | {int(steps)} |
| effective batch | {int(effective_batch)} |
| learning rate | {float(lr):g} |
| precision | {precision} |
| EMA | {ema_text} |

## Final metrics

{_metrics_table(metrics)}
## Samples

{grid}
{_usage(where, class_names)}"""
    card = pipeline_dir / "README.md"
    data = _card_data(base_model, dataset, license, conditional=class_names is not None)
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(card)
    return card
