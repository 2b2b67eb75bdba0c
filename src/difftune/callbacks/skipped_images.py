"""Undecodable images: `data/skipped` per epoch; each file named once, when it is first skipped."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

LIST_NAME = "skipped_images.txt"
SHOWN = 3  # files named in the log line


def escaped(name: str) -> str:
    """A file name that stays one field of one line: backslash, tab and newlines escaped."""
    return name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class SkipReport:
    """Collects the `skipped` / `skipped_files` of each batch and reports them per split, each
    named file once: an epoch that skips only files named before says so at debug level."""

    def __init__(self) -> None:
        self.pending: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
        self.named: set[tuple[str, str, str]] = set()  # (split, reason, file) already reported

    def add(self, split: str, batch: dict[str, Any]) -> int:
        """Record a batch's skipped images; return how many there were."""
        reasons = list(batch.get("skipped", ()))
        files = list(batch.get("skipped_files", ())) or [""] * len(reasons)
        self.pending[split].extend(zip(reasons, files, strict=True))
        return len(reasons)

    def flush(self, split: str, when: str, trainer: Any) -> None:
        """Log `<when>: skipped K undecodable images (reasons): files`, append them to the list."""
        found, self.pending[split] = self.pending[split], []
        items = [(r, f) for r, f in found if not f or (split, r, f) not in self.named]
        before = len(found) - len(items)  # files without a name (bytes) cannot be told apart
        self.named.update((split, r, f) for r, f in items if f)
        held = " held-out" if split == "val" else ""
        if not items and before:
            log.debug("%s: skipped the %d undecodable%s images named before", when, before, held)
        if not items:
            return
        reasons = Counter(reason for reason, _ in items)
        why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        names = [escaped(Path(source).name) for _, source in items if source]
        shown = ", ".join(names[:SHOWN]) + (
            f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
        )
        where = self._write(split, when, items, trainer)
        log.warning(
            "%s: skipped %d undecodable%s images (%s)%s%s%s", when, len(items), held, why,
            f": {shown}" if shown else "", f" (and {before} named before)" if before else "",
            f"; all listed in {where}" if where else "",
        )  # fmt: skip

    @staticmethod
    def _write(split: str, when: str, items: list[tuple[str, str]], trainer: Any) -> Path | None:
        """Append `split<TAB>when<TAB>reason<TAB>file` lines to the run dir's list (rank 0)."""
        root = getattr(trainer, "default_root_dir", None)
        if root is None or not getattr(trainer, "is_global_zero", True):
            return None
        path = Path(root) / LIST_NAME
        try:
            with open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.writelines(f"{split}\t{when}\t{r}\t{escaped(s) or '<bytes>'}\n" for r, s in items)
        except OSError as err:  # the report must not end a run
            log.warning("could not write %s: %s", path, err)
            return None
        return path


class SkippedImages(Callback):
    """Reads each batch's `skipped` / `skipped_files` (the DataModule's collate) and reports them:
    one log line for the training epoch or validation that first skips a file (the same files
    again, at debug level), the full list in `skipped_images.txt` (each file once)."""

    #: what it logs (run/objective.py checks an `objective=` against these before training)
    METRICS = ("data/skipped",)

    def __init__(self) -> None:
        self.report = SkipReport()
        self.epoch_skipped = 0  # this training epoch's count, logged once at its end

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch_skipped = 0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # counted here, logged at the epoch's end: a number logged each step would be one
        # host-to-GPU copy, which waits for the GPU, per step
        self.epoch_skipped += self.report.add("train", batch)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self.report.add("val", batch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log(
            "data/skipped", float(self.epoch_skipped), on_step=False, on_epoch=True,
            reduce_fx="sum", sync_dist=True,
        )  # fmt: skip
        self.report.flush("train", f"epoch {trainer.current_epoch}", trainer)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.report.flush("val", f"validation at step {trainer.global_step}", trainer)
