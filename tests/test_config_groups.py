"""Every option of every config group, composed with the real config and instantiated.

Options are found by listing conf/<group>/*.yaml, so a new option is tested without a new test.
What a CPU-only, offline machine cannot build gets a local stand-in (a hub model: the tiny local
pipeline; a hub dataset: a local image folder), or its exact failure is asserted (a GPU trainer
without a GPU) beside the same trainer built on the CPU. `guidance` and `scheduler` are tested
option by option in tests/guidance/test_guidance.py and tests/run/test_sample_images.py.
"""

import logging
import re
from pathlib import Path

import hydra
import pytest
import torch
import yaml
from huggingface_hub.utils import validate_repo_id
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from difftune.hub.pipelines import resolve_pretrained
from difftune.run.train import build_module
from helpers.compose import CONF

TESTED_ELSEWHERE = {"guidance", "scheduler"}
PRIMARIES = ("train", "sample")


def defaults_of(primary: str) -> set[str]:
    """The groups a primary config's defaults list names."""
    entries = yaml.safe_load((CONF / f"{primary}.yaml").read_text())["defaults"]
    return {key for entry in entries if isinstance(entry, dict) for key in entry}


def primaries_of(group: str, option: str) -> list[str]:
    """The primary configs an option belongs to; a `python X.py group=option` line in its
    comments narrows them (a sweep of sample.py composes with train.yaml too, uselessly)."""
    text = (CONF / group / f"{option}.yaml").read_text()
    named = re.findall(rf"python (train|sample)\.py\b[^\n]*\b{group}={option}\b", text)
    top = group.split("/")[0]
    return [p for p in PRIMARIES if top in defaults_of(p) and (not named or p in named)]


def all_options() -> list[tuple[str, str, str]]:
    """(primary, group, option) for every conf/<group>/<option>.yaml, nested groups included."""
    found = []
    for folder in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONF).as_posix()
        if group.split("/")[0] in TESTED_ELSEWHERE:
            continue
        for option in sorted(p.stem for p in folder.glob("[!_]*.yaml")):
            found += [(primary, group, option) for primary in primaries_of(group, option)]
    return found


OPTIONS = all_options()


def test_the_options_are_found():
    groups = {group for _, group, _ in OPTIONS}
    assert groups >= {"model", "model/lr_scheduler", "data", "callbacks", "logger", "hardware",
                      "ema", "experiment", "sweep", "paths", "hydra"}  # fmt: skip
    assert ("sample", "sweep", "guidance_scale") in OPTIONS
    assert ("train", "sweep", "guidance_scale") not in OPTIONS  # its comment says sample.py


def compose_job(primary: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """The config a job of `python <primary>.py <overrides>` sees, running in `run_dir`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(primary, overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(run_dir)  # set by Hydra as the job starts
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a job
    return cfg


def stand_ins(cfg: DictConfig, pipeline_dir: Path, image_folder: Path) -> list[str]:
    """Overrides that swap a hub model or dataset for a local one (after checking its id)."""
    swaps = []
    model = cfg.get("model")
    if model is not None:
        pretrained = OmegaConf.select(model, "pretrained")  # None when absent or ??? (required)
        hub = pretrained is not None and not Path(resolve_pretrained(pretrained)).is_dir()
        if hub:
            validate_repo_id(pretrained)  # a well-formed hub id, loaded here from a local copy
        if hub or OmegaConf.is_missing(model, "pretrained"):
            swaps.append(f"model.pretrained={pipeline_dir}")
    data = cfg.get("data")
    if data is not None and data.source == "hf":
        if data.dataset_name is not None:
            validate_repo_id(data.dataset_name)
        swaps.append(f"data.dataset_name={image_folder}")
    if data is not None and data.source == "imagefolder":
        swaps.append(f"data.data_dir={image_folder}")
    return swaps


def first_job(cfg: DictConfig) -> list[str]:
    """The overrides of a sweep's first job: each swept key at its first (or lowest) value."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    overrides = []
    for key, value in params.items():
        swept = OverridesParser.create().parse_override(f"{key}={value}")
        if swept.is_discrete_sweep():
            first = next(iter(swept.sweep_string_iterator()))
        elif swept.is_interval_sweep():
            first = swept.value().start
        else:
            first = swept.get_value_element_as_str()
        overrides.append(f"{key}={first}")
    return overrides


def build_plugin(node: DictConfig, kind: type) -> object:
    """A sweeper or launcher, as Hydra builds it: Hydra's own plugins are refused by
    `instantiate` (they expose Hydra's internals), so those are constructed directly."""
    classes = {f"{c.__module__}.{c.__name__}": c for c in Plugins.instance().discover(kind)}
    assert node._target_ in classes, f"{node._target_} is not an installed {kind.__name__}"
    cls = classes[node._target_]
    if cls.__module__.startswith("hydra._internal."):
        return cls(**{key: value for key, value in node.items() if key != "_target_"})
    return hydra.utils.instantiate(node)


def check_hydra_parts(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra's callbacks, sweeper, launcher, log filters and run/sweep dirs of a composed job."""
    for node in (cfg.hydra.callbacks or {}).values():
        assert isinstance(hydra.utils.instantiate(node), HydraCallback), node
    assert isinstance(build_plugin(cfg.hydra.sweeper, Sweeper), Sweeper)
    assert isinstance(build_plugin(cfg.hydra.launcher, Launcher), Launcher)
    for logging_cfg in (cfg.hydra.job_logging, cfg.hydra.hydra_logging):
        for spec in (logging_cfg.get("filters") or {}).values():
            assert isinstance(hydra.utils.get_object(spec["()"])(), logging.Filter), spec
        for name, handler in logging_cfg.handlers.items():
            assert "class" in handler, f"handler {name} has filters but is no handler"
    assert str(cfg.hydra.run.dir) and str(cfg.hydra.sweep.dir)
    if "paths" in cfg:
        assert cfg.paths.output_dir == str(run_dir)


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, run_dir: Path) -> None:
    """The Trainer with the callbacks and loggers; a GPU trainer without a GPU fails as Lightning
    says, and the rest of its settings must still build on the CPU."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        with pytest.raises(InstantiationException, match="No supported gpu backend found!"):
            hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        on_cpu = dict(accelerator="cpu", devices=1, num_nodes=1)
    else:
        on_cpu = {}
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, **on_cpu)
    assert isinstance(trainer, Trainer)
    assert trainer.precision == cfg.trainer.precision
    assert trainer.max_steps == cfg.trainer.max_steps
    assert trainer.accumulate_grad_batches == cfg.trainer.accumulate_grad_batches
    assert trainer.default_root_dir == str(run_dir)
    assert all(any(c is t for t in trainer.callbacks) for c in callbacks)
    assert [type(logger) for logger in trainer.loggers] == [type(x) for x in loggers]


def build_train(cfg: DictConfig, run_dir: Path) -> None:
    """What `train(cfg)` builds: callbacks, loggers, Trainer, optimizer, schedule, data, model."""
    callbacks = [hydra.utils.instantiate(n) for n in cfg.callbacks.values() if n is not None]
    assert all(isinstance(c, Callback) for c in callbacks), callbacks
    loggers = [hydra.utils.instantiate(n) for n in (cfg.logger or {}).values() if n is not None]
    assert all(isinstance(logger, Logger) for logger in loggers), loggers
    for logger in loggers:
        logger.experiment  # noqa: B018 - the run (or writer) really starts
        assert Path(logger.log_dir or logger.save_dir).is_relative_to(run_dir), logger.save_dir
    build_trainer(cfg, callbacks, loggers, run_dir)

    stand_in = torch.nn.Parameter(torch.zeros(1))
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)([stand_in])
    assert optimizer.defaults["lr"] == cfg.model.optimizer.lr
    if cfg.model.get("lr_scheduler") is not None:
        schedule = hydra.utils.instantiate(cfg.model.lr_scheduler)(optimizer=optimizer)
        optimizer.step()
        schedule.step()

    datamodule = hydra.utils.instantiate(cfg.data)
    assert isinstance(datamodule, LightningDataModule)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    images = batch["images"]
    assert images.shape[1:] == (3, cfg.data.image_size, cfg.data.image_size)
    assert 0 < len(images) <= cfg.data.batch_size
    if cfg.data.get("label_column"):
        assert batch["labels"].shape == (len(images),)
    assert isinstance(build_module(cfg.model, datamodule), LightningModule)


def build_sample(cfg: DictConfig) -> None:
    """What `sample.py` builds from its config: every top-level `_target_` node."""
    for key, node in cfg.items():
        if key != "hydra" and isinstance(node, DictConfig) and "_target_" in node:
            assert hydra.utils.instantiate(node) is not None, key


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(
    ("primary", "group", "option"), OPTIONS, ids=[f"{p}:{g}={o}" for p, g, o in OPTIONS]
)
def test_every_option_instantiates(
    primary, group, option, tiny_pipeline_dir, image_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's run starts, with no login and no network
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    chosen = [f"{group}={option}"]
    cfg = compose_job(primary, chosen, run_dir)
    chosen += stand_ins(cfg, tiny_pipeline_dir, image_folder)
    cfg = compose_job(primary, chosen + first_job(cfg), run_dir)
    assert cfg.hydra.runtime.choices[group] == option
    check_hydra_parts(cfg, run_dir)
    if primary == "train":
        build_train(cfg, run_dir)
    else:
        build_sample(cfg)
