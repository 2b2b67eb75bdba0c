"""`torch.compile` in a `train.py` subprocess without inductor's C++ codegen (a minute cold in
each process): `+callbacks.compile._target_=helpers.compile.WithoutCodegen`, tests/ on
PYTHONPATH."""

from pathlib import Path

import torch
from lightning.pytorch import Callback


class WithoutCodegen(Callback):
    """From its construction (before the module compiles at fit start), `torch.compile` goes
    through dynamo and AOTAutograd with eager kernels; the compiled function's calls are counted
    to `<run dir>/compiled_calls_rank<r>.txt` when the fit ends."""

    def __init__(self) -> None:
        self.calls = 0
        torch_compile = torch.compile

        def compile_(fn, **kwargs):
            compiled = torch_compile(fn, backend="aot_eager", **kwargs)

            def counted(*args, **kwargs):
                self.calls += 1
                return compiled(*args, **kwargs)

            return counted

        torch.compile = compile_

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(trainer.default_root_dir) / f"compiled_calls_rank{trainer.global_rank}.txt"
        path.write_text(str(self.calls))
