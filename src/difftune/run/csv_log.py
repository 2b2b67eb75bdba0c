"""`metrics.csv` that survives a resume: Lightning's CSV logger deletes it when the dir has one."""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

Points = list[tuple[int, float]]


class _ResumingWriter(ExperimentWriter):
    """Keeps an existing `metrics.csv`; its first save drops the rows at or after the step it
    starts from (written after the checkpoint the run resumed from), then appends."""

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv
        self._continued = os.path.isfile(self.metrics_file_path)
        if self._continued:
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def save(self) -> None:
        if self._continued and self.metrics:
            self._continued = False
            first = min(int(row["step"]) for row in self.metrics)
            with open(self.metrics_file_path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(float(row["step"])) < first]
            with open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        super().save()


class ResumingCSVLogger(CSVLogger):
    """Lightning's `CSVLogger`, but a run that continues in its dir appends to `metrics.csv`."""

    def history(self, before_step: int, keys: tuple[str, ...]) -> dict[str, Points]:
        """(step, value) of each key in the rows logged before `before_step` (a resumed run's)."""
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        found: dict[str, Points] = {key: [] for key in keys}
        if not os.path.isfile(path):
            return found
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row["step"]))
                for key in keys:
                    if step < before_step and row.get(key):
                        found[key].append((step, float(row[key])))
        return found

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment
