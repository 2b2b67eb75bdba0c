"""Loading pretrained DDPM pipelines (hub id, local dir, training run dir) and exporting them."""

import shutil
import tempfile
from pathlib import Path
from typing import Any

from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from difftune.errors import DifftuneError

ASSETS_DIR = Path(__file__).parent / "assets"
EMBEDDED = {"difftune/tiny_base": ASSETS_DIR / "tiny_base"}
OFFLINE_HINT = (
    "pass a local pipeline dir (model.pretrained=/path/with/model_index.json), "
    "set HF_HUB_OFFLINE=1 to use a cached download, or use model=tiny_base"
)


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
        raise DifftuneError(f"{key}='{pretrained}': no such directory; {OFFLINE_HINT}")
    try:
        return fn(path, **kwargs)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DifftuneError(
            f"{key}='{pretrained}': could not load its {what} ({reason}); {OFFLINE_HINT}"
        ) from err


def load_unet_config(pretrained: str, key: str = "model.pretrained") -> dict[str, Any]:
    """Read only `unet/config.json` (no weights), e.g. to validate `data.image_size` early."""
    return dict(_load(UNet2DModel.load_config, pretrained, "UNet config", key, subfolder="unet"))


def load_unet(pretrained: str, key: str = "model.pretrained") -> UNet2DModel:
    """The pipeline's UNet2DModel, from safetensors when the repo has them."""
    return _load(UNet2DModel.from_pretrained, pretrained, "UNet", key, subfolder="unet")


def load_noise_scheduler(pretrained: str, key: str = "model.pretrained") -> DDPMScheduler:
    """The pipeline's training noise schedule (betas, prediction_type) as a DDPMScheduler."""
    config = _load(
        DDPMScheduler.load_config, pretrained, "scheduler config", key, subfolder="scheduler"
    )
    return DDPMScheduler.from_config(config)


def unet_downsample_factor(unet_config: dict[str, Any]) -> int:
    """Spatial sizes must be multiples of this: every down block but the last halves the size."""
    return 2 ** (len(unet_config["down_block_types"]) - 1)


def export_pipeline(unet: UNet2DModel, scheduler: SchedulerMixin, out_dir: str | Path) -> Path:
    """Save a DDPMPipeline (safetensors) atomically: write beside, then rename over `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config))
    pipeline.save_pretrained(tmp, safe_serialization=True)
    for path in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; an export is for sharing
        path.chmod(0o755 if path.is_dir() else 0o644)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    return out_dir
