"""One page request: `sample.py`'s job in a thread, its steps streamed, its files zipped."""

from __future__ import annotations

import logging
import queue
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from PIL import Image

from difftune.pictures.images import grid_image
from difftune.run.build_errors import config_error
from difftune.run.cli import user_error
from difftune.run.disk import disk_error
from difftune.run.memory import memory_error
from difftune.run.preflight import check_command_line
from difftune.run.sample_images import sample_images

log = logging.getLogger(__name__)
SHOWN = 4  # images of the first batch in the streamed x_t / x̂0 picture


@dataclass
class Update:
    """What the page shows after a step, at the end, or on an error (one of them set)."""

    step: int = 0
    steps: int = 0
    progression: Image.Image | None = None  # x_t (top row) above the x̂0 it predicts
    grid: Path | None = None
    unguided: Path | None = None
    archive: Path | None = None
    error: str | None = None


def compose_sample(config_dir: Path, overrides: list[str]) -> DictConfig:
    """`sample.py`'s config with these overrides, checked as `sample.py` checks its command line
    (a bad value is a one-line DifftuneError)."""
    GlobalHydra.instance().clear()  # the page composes on its own, inside demo.py's Hydra app too
    check_command_line(config_dir, "sample", overrides)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("sample", overrides=overrides)


def progression_picture(step: dict) -> Image.Image:
    """x_t of the first images above the x̂0 they predict, as one grid."""
    n = min(SHOWN, step["x_t"].shape[0])
    return grid_image(torch.cat([step["x_t"][:n], step["x0"][:n]]), nrow=n)


def message(error: BaseException, cfg: DictConfig | None = None) -> str:
    """A user's mistake in one line; anything else a short line (the traceback is in the log)."""
    cause = (
        user_error(error)
        or config_error(error, cfg)
        or disk_error(error)
        or memory_error(error, cfg)
    )
    if cause is not None:
        return str(cause)
    log.error("demo: sampling failed", exc_info=error)
    first = (str(error).splitlines() or [""])[0][:200]
    return f"internal error ({type(error).__name__}: {first}); the server log has the details"


def zip_outputs(out_dir: Path, command: str) -> Path:
    """The run's PNGs and the command that reproduces them, in one zip."""
    (out_dir / "command.txt").write_text(command + "\n")
    archive = out_dir / "difftune_samples.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(out_dir.rglob("*")):
            if path.suffix in (".png", ".txt") and path != archive:
                zf.write(path, path.relative_to(out_dir))
    return archive


def run_job(cfg: DictConfig, command: str, every: int) -> Iterator[Update]:
    """Run `sample_images(cfg)` in a thread; an Update every `every` steps, then the result."""
    steps: queue.Queue[Any] = queue.Queue()
    total = int(cfg.num_inference_steps)

    def work() -> None:
        try:
            steps.put(("done", sample_images(cfg, on_step=lambda s: steps.put(("step", s)))))
        except Exception as error:  # reported on the page, the server goes on
            steps.put(("error", message(error, cfg)))

    threading.Thread(target=work, name="difftune-demo-sample", daemon=True).start()
    while True:
        kind, value = steps.get()
        if kind == "step":
            i = value["i"]
            if i % every == 0 or i == total - 1:
                yield Update(step=i + 1, steps=total, progression=progression_picture(value))
        elif kind == "error":
            yield Update(error=value)
            return
        else:
            out_dir = Path(value).parent
            unguided = out_dir / "grid_unguided.png"
            yield Update(
                step=total, steps=total, grid=Path(value),
                unguided=unguided if unguided.exists() else None,
                archive=zip_outputs(out_dir, command),
            )  # fmt: skip
            return
