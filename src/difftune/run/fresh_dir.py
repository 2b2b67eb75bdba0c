"""The default run dir, `outputs/<task>/<date>_<time>`, new for every run: two runs started in the
same second (a shell loop's `&`) shared one, and the second sampled over the first's images."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "difftune.fresh_dir"  # conf/hydra/default.yaml's run.dir
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID")
_claimed: dict[str, str] = {}  # base -> the dir this process made for it
_choosing = False


def fresh_dir(base: str) -> str:
    """`base`, or `base_1`, `base_2` ... where that exists, made here: `mkdir` succeeds for one
    process only, so no two runs get the same. One process gets the same answer for a base each
    time. The ranks of one run (torchrun, srun) all take `base`, as the preflight does (it only
    looks)."""
    if base in _claimed or _choosing or any(key in os.environ for key in RANK_VARIABLES):
        return _claimed.get(base, base)
    path = Path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1_000_000):
        candidate = path if n == 0 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _claimed[base] = str(candidate)
        break
    return _claimed[base]


@contextmanager
def choosing_only() -> Iterator[None]:
    """Within the block, `fresh_dir` makes nothing (the preflight composes every job first)."""
    global _choosing
    before, _choosing = _choosing, True
    try:
        yield
    finally:
        _choosing = before


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, fresh_dir)
