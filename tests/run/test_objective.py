"""`objective=`: a metric the run logs, checked from the config before anything trains."""

import pytest

from difftune.errors import DifftuneError
from difftune.run.objective import check_objective
from helpers.cli import SHRINK_CLI, run_cli
from helpers.compose import compose_train


@pytest.mark.parametrize(
    ("overrides", "objective"),
    [
        ((), "val/loss"),
        ((), "lr-AdamW/pg1"),  # LearningRateMonitor's names carry the optimizer's
        (("callbacks=kid",), "val/kid_small"),
        (("callbacks=kid",), "val/kid_small/photo"),  # per class, for conditional models
        (("callbacks=kid", "callbacks.kid.fid=true"), "val/fid_small"),
        (("callbacks=kid", "callbacks.kid.features=inception"), "val/kid_inception_std"),
        (("ema=default",), "ema/decay"),
        # a callback of unknown metrics may log this name: not refused
        (("+callbacks.mine._target_=lightning.pytorch.callbacks.LambdaCallback",), "my/score"),
    ],
)
def test_a_metric_the_run_logs_is_accepted(tmp_path, overrides, objective):
    cfg = compose_train(*overrides, f"objective={objective}", output_dir=tmp_path)
    check_objective(cfg)


@pytest.mark.parametrize(
    ("overrides", "objective", "message"),
    [
        (("callbacks=kid",), "val/kid_smal",
         "objective=val/kid_smal: not a metric this run logs (did you mean val/kid_small?); it "
         "logs train/loss, val/loss, perf/images_per_s, perf/peak_memory_mb, lr-*, "
         "data/skipped, train/nonfinite_skipped, val/kid_small, val/kid_small_std, "
         "val/kid_small/*, val/kid_small_std/*"),
        ((), "val/kid_small", "; KID and FID need callbacks=kid"),
        (("callbacks=kid",), "val/fid_small", "did you mean val/kid_small?"),
        ((), "val/los", "(did you mean val/loss?)"),
        (("data.val_size=0",), "val/loss",
         "objective=val/loss: data.val_size=0 holds out no validation images"),
        ((), "3", "objective=3: expected the name of a final metric"),
    ],
)  # fmt: skip
def test_a_metric_the_run_never_logs_is_one_line(tmp_path, overrides, objective, message):
    cfg = compose_train(*overrides, f"objective={objective}", output_dir=tmp_path)
    with pytest.raises(DifftuneError) as err:
        check_objective(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_mistyped_objective_stops_an_optuna_sweep_before_any_trial_trains(tmp_path):
    result = run_cli(
        "sweep=lr_optuna", "objective=val/kid_smal", *SHRINK_CLI, f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: objective=val/kid_smal: not a metric this run logs (did you ")
    assert "(did you mean val/kid_small?)" in last
    assert not (tmp_path / "0").exists()  # no trial started
