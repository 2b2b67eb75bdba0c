"""`final_metrics.json`: the last value of every scalar a run logged, as strict JSON.

A non-finite value (the loss of a run the non-finite guard stopped) is written `null`, which
`jq`, pandas and JavaScript read, where Python's default `NaN` token is not JSON; it reads back as
NaN.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path


def write_final_metrics(path: Path, metrics: Mapping[str, float]) -> None:
    """`metrics` as `path`, keys sorted, non-finite values `null`."""
    values = {name: value if math.isfinite(value) else None for name, value in metrics.items()}
    path.write_text(json.dumps(values, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_final_metrics(path: Path) -> dict[str, float]:
    """The metrics `write_final_metrics` wrote (`null` as NaN)."""
    values = json.loads(path.read_text())
    return {name: math.nan if value is None else float(value) for name, value in values.items()}
