"""Loading pretrained DDPM pipelines (hub id, local dir, training run dir) and exporting them;
diffusers is imported by what loads or saves weights, not by the config checks (seconds)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difftune.errors import DifftuneError

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

ASSETS_DIR = Path(__file__).parent.parent / "assets"
EMBEDDED = {"difftune/tiny_base": ASSETS_DIR / "tiny_base"}


def offline_hint(key: str = "model.pretrained") -> str:
    """What to do without the hub; HF_HUB_OFFLINE=1 is suggested only when it is not set."""
    from huggingface_hub.constants import HF_HUB_OFFLINE

    cache = (
        "HF_HUB_OFFLINE=1 is set, so only models already in the HF cache load"
        if HF_HUB_OFFLINE
        else "set HF_HUB_OFFLINE=1 to use a cached download"
    )
    embedded = "model=tiny_base" if key == "model.pretrained" else f"{key}=difftune/tiny_base"
    local = f"{key}=/path/with/model_index.json"
    return f"pass a local pipeline dir ({local}), {cache}, or use {embedded}"


def resolve_pretrained(pretrained: str) -> str:
    """Map an embedded name or a training run dir to a loadable path; hub ids pass through."""
    if pretrained in EMBEDDED:
        return str(EMBEDDED[pretrained])
    run_pipeline = Path(pretrained) / "pipeline"
    if (run_pipeline / "model_index.json").is_file():
        return str(run_pipeline)
    return str(pretrained)


def _load(fn: Any, pretrained: str, what: str, key: str, **kwargs: Any) -> Any:
    path = resolve_pretrained(pretrained)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise DifftuneError(f"{key}='{pretrained}': no such directory; {offline_hint(key)}")
    try:
        return fn(path, **kwargs)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DifftuneError(
            f"{key}='{pretrained}': could not load its {what} ({reason}); "
            f"{_advice(Path(path).expanduser(), key)}"
        ) from err


def _advice(local: Path, key: str) -> str:
    """What to do about a pipeline that did not load: a run stopped before its export, a dir
    that is no pipeline (a folder of runs, say), a damaged one, or one not on this disk."""
    if not local.is_dir():
        return offline_hint(key)
    if (local / "checkpoints").is_dir():  # a run stopped before its export
        last = local / "checkpoints" / "last.ckpt"
        return (
            f"a training run without pipeline/ (it stopped before the export); export one "
            f"of its checkpoints: python -m difftune.hub.export "
            f"{last if last.is_file() else local / 'checkpoints' / '<step>.ckpt'}"
        )
    if not (local / "model_index.json").is_file() and not (local / "unet").is_dir():
        runs = sorted(p for p in local.iterdir() if (p / "pipeline" / "model_index.json").is_file())
        return (
            "not a pipeline dir (no model_index.json): pass a run dir, its pipeline/, or a dir "
            "that DDPMPipeline.save_pretrained wrote"
            + (f"; here, runs such as {runs[-1]}" if runs else "")
        )
    return "its files are damaged or incomplete: export or download it again"


def _config(path: str, subfolder: str) -> dict[str, Any]:
    """`unet/config.json` or `scheduler/scheduler_config.json`: a local pipeline's read as JSON
    (what diffusers' `load_config` returns there, without importing diffusers), a hub id's
    through diffusers."""
    name = "scheduler_config.json" if subfolder == "scheduler" else "config.json"
    local = Path(path).expanduser() / subfolder / name
    if local.is_file():
        return json.loads(local.read_text())
    from diffusers import DDPMScheduler, UNet2DModel

    owner = DDPMScheduler if subfolder == "scheduler" else UNet2DModel
    return dict(owner.load_config(path, subfolder=subfolder))


def load_unet_config(pretrained: str, key: str = "model.pretrained") -> dict[str, Any]:
    """Read only `unet/config.json` (no weights), e.g. to validate `data.image_size` early."""
    return _load(_config, pretrained, "UNet config", key, subfolder="unet")


def load_scheduler_config(pretrained: str, key: str = "model.pretrained") -> dict[str, Any]:
    """Read only `scheduler/scheduler_config.json`, e.g. to check a step count early."""
    return _load(_config, pretrained, "scheduler config", key, subfolder="scheduler")


def load_unet(pretrained: str, key: str = "model.pretrained") -> UNet2DModel:
    """The pipeline's UNet2DModel, from safetensors when the repo has them."""
    from diffusers import UNet2DModel

    return _load(UNet2DModel.from_pretrained, pretrained, "UNet", key, subfolder="unet")


def load_noise_scheduler(pretrained: str, key: str = "model.pretrained") -> DDPMScheduler:
    """The pipeline's training noise schedule (betas, prediction_type) as a DDPMScheduler."""
    from diffusers import DDPMScheduler

    config = _load(
        DDPMScheduler.load_config, pretrained, "scheduler config", key, subfolder="scheduler"
    )
    return DDPMScheduler.from_config(config)


def unet_downsample_factor(unet_config: dict[str, Any]) -> int:
    """Spatial sizes must be multiples of this: every down block but the last halves the size."""
    return 2 ** (len(unet_config["down_block_types"]) - 1)


def export_pipeline(unet: UNet2DModel, scheduler: SchedulerMixin, out_dir: str | Path) -> Path:
    """Save a DDPMPipeline (safetensors) so that `out_dir` loads at every moment.

    Each export is a new complete directory `.<name>.export-<random>` beside `out_dir`, and
    `out_dir` is a symlink to it, replaced by one atomic rename; then the previous version is
    removed. A failed or interrupted export leaves `out_dir` as it was; the next export removes
    whatever an interrupted one left behind.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    version = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    try:
        pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config))
        pipeline.save_pretrained(version, safe_serialization=True)
        for path in [version, *version.rglob("*")]:  # mkdtemp makes 0700; an export is for sharing
            path.chmod(0o755 if path.is_dir() else 0o644)
        previous = _point(out_dir, version)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return out_dir


def _point(out_dir: Path, version: Path) -> Path | None:
    """Make `out_dir` a symlink to `version` in one rename; return what it held before."""
    link = version.with_name(f"{version.name}.link")
    link.symlink_to(version.name)
    previous = _current_version(out_dir)
    if out_dir.is_dir() and not out_dir.is_symlink():  # a plain dir (an export before versions):
        previous = version.with_name(f"{version.name}.previous")  # the one step with no out_dir
        out_dir.rename(previous)
    os.replace(link, out_dir)
    return previous


def _current_version(out_dir: Path) -> Path | None:
    """The version `out_dir` points to, when it is a symlink that `export_pipeline` made."""
    target = os.readlink(out_dir) if out_dir.is_symlink() else ""
    if target.startswith(f".{out_dir.name}.export-") and os.sep not in target:
        return out_dir.parent / target
    return None


def _remove_leftovers(out_dir: Path) -> None:
    """Remove the versions and links of exports to `out_dir` that `out_dir` does not point to."""
    current = _current_version(out_dir)
    for path in out_dir.parent.glob(f".{out_dir.name}.export-*"):
        if path.is_symlink():
            path.unlink()
        elif path != current:
            shutil.rmtree(path, ignore_errors=True)
