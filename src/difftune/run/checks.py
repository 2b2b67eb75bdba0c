"""Reject bad training configs in one line each, before any model or dataset is loaded: first the
values that need no library (a typo answers in about a second: torch, diffusers and Lightning
take seconds to import), then what needs them (the optimizer, the loggers, the callbacks)."""

import math
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from difftune.core.attention import check_attention, check_matmul_precision
from difftune.core.conditioning import check_conditioning
from difftune.core.options import check_ema_options, check_module_options
from difftune.data.folders import class_folders
from difftune.data.options import check_data_options, style_tuple
from difftune.errors import DifftuneError, is_int_at_least
from difftune.guidance.options import check_guidance_config
from difftune.hub.pipelines import load_unet_config, unet_downsample_factor
from difftune.run import preflight
from difftune.run.trainer_keys import check_trainer_keys

SEED_MAX = 2**32 - 1  # numpy's seeds, and so Lightning's `seed_everything`
EMA_KEYS = ("decay", "warmup", "inv_gamma", "power", "update_every_n_steps")  # conf/ema/default


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DifftuneError(message)


def check_seed(seed: Any, key: str = "seed") -> None:
    """A seed is an integer that numpy (and so Lightning's `seed_everything`) accepts."""
    _require(
        is_int_at_least(seed, 0) and seed <= SEED_MAX,
        f"{key}={seed} must be an integer in 0..{SEED_MAX}",
    )


def check_device(device: Any, key: str = "device") -> None:
    """`auto`, `cpu`, or `cuda` on a machine that has a CUDA GPU."""
    _require(device in ("auto", "cpu", "cuda"), f"{key}={device} is not one of auto, cpu, cuda")
    _require(
        device != "cuda" or preflight.cuda_available(),
        f"{key}={device} but no CUDA GPU is visible; use {key}=cpu (or {key}=auto)",
    )


def unet_config_of(model_cfg: DictConfig) -> dict[str, Any]:
    """The UNet's config: from `model.unet` when built from scratch, else `unet/config.json`."""
    if model_cfg.get("pretrained"):
        return load_unet_config(model_cfg.pretrained)
    if str((model_cfg.get("unet") or {}).get("_target_", "")).endswith("load_unet"):
        raise DifftuneError(
            f"model.pretrained={model_cfg.get('pretrained')}: this model loads its UNet from a "
            "pipeline; pass one (model.pretrained=<hub id or dir>), or use model=scratch"
        )
    unet = dict(model_cfg.unet)
    check_architecture(unet)
    return unet


def check_architecture(unet: dict[str, Any]) -> None:
    """A `model=scratch` UNet2DModel that diffusers would refuse (after torch and Lightning
    loaded): one entry per resolution in each list, channels its GroupNorm can split."""
    lists = ("block_out_channels", "down_block_types", "up_block_types")
    lengths = {key: len(unet.get(key) or ()) for key in lists}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"model.unet.{k}={list(unet.get(k) or ())}" for k in lists)
        raise DifftuneError(
            f"{shown}: {'/'.join(map(str, lengths.values()))} entries; give each list one "
            "entry per resolution (the same number)"
        )
    groups = unet.get("norm_num_groups", 32)  # UNet2DModel's default
    uneven = [c for c in unet.get("block_out_channels") or () if c % groups]
    _require(
        not uneven,
        f"model.unet.norm_num_groups={groups} does not divide model.unet.block_out_channels="
        f"{list(unet.get('block_out_channels'))} ({uneven[0] if uneven else ''} channels); use "
        "multiples of it, or set model.unet.norm_num_groups",
    )


def check_image_size(
    image_size: Any, unet_config: dict[str, Any], key: str = "data.image_size"
) -> None:
    """The image size must be a positive multiple of the UNet's downsampling factor."""
    factor = unet_downsample_factor(unet_config)
    _require(
        is_int_at_least(image_size, 1) and image_size % factor == 0,
        f"{key}={image_size} cannot go through this UNet: use a multiple of {factor} "
        f"(e.g. {max(factor, 32 // factor * factor)}, 64, 128, 256)",
    )


def check_optimizer(optimizer_cfg: DictConfig) -> None:
    """Build the optimizer once on a stand-in parameter, so torch checks its arguments now."""
    import hydra
    import torch

    stand_in = [torch.nn.Parameter(torch.zeros(1))]
    hydra.utils.instantiate(optimizer_cfg, params=stand_in, _partial_=False)


def check_train_config(cfg: DictConfig) -> None:
    """Cheap checks of the composed config; the UNet is looked at through its config.json only."""
    check_train_values(cfg)
    check_train_parts(cfg)


def check_train_values(cfg: DictConfig) -> None:
    """The values that need no library imported (a typo is one line within about a second), the
    image size and the classes against the UNet's config."""
    preflight.check_hardware(cfg)
    check_seed(cfg.get("seed"))
    check_matmul_precision(cfg.get("matmul_precision"))
    check_attention(cfg.model.get("attention", "sdpa"))
    lr = cfg.model.optimizer.get("lr")
    _require(
        isinstance(lr, int | float) and math.isfinite(lr) and lr > 0,
        f"model.optimizer.lr={lr} must be a number > 0 and finite (fine-tuning uses ~1e-5)",
    )
    check_trainer_keys(cfg)
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    _require(
        is_int_at_least(accumulate, 1),
        f"trainer.accumulate_grad_batches={accumulate} must be an integer >= 1",
    )
    ckpt_path = cfg.get("ckpt_path")
    _require(
        ckpt_path is None or Path(ckpt_path).is_file(),
        f"ckpt_path={ckpt_path} "
        f"{'is a directory' if ckpt_path and Path(ckpt_path).is_dir() else 'does not exist'}; "
        "pass the path of a .ckpt file (e.g. outputs/<run>/checkpoints/last.ckpt) or leave it "
        "null to start fresh",
    )
    for key in ("push_to_hub", "hub.private"):
        value = OmegaConf.select(cfg, key, default=False)
        _require(isinstance(value, bool), f"{key}={value!r}: expected true or false")
    _require(
        not cfg.get("push_to_hub") or bool(cfg.hub.get("repo_id")),
        "push_to_hub=true needs hub.repo_id=<user or org>/<name>",
    )
    precision = str(cfg.trainer.get("precision", "32-true"))
    clip = cfg.trainer.get("gradient_clip_val") or 0
    _require(  # fp16's gradient scaler: the fused step unscales the gradients after any clip
        not (cfg.model.optimizer.get("fused") and clip > 0 and precision in ("16-mixed", "16")),
        f"model.optimizer.fused=true with trainer.gradient_clip_val={clip} under "
        f"trainer.precision={precision}: a fused optimizer unscales fp16 gradients only in its "
        "step, after the clip; set model.optimizer.fused=null, trainer.gradient_clip_val=0 or "
        "trainer.precision=bf16-mixed",
    )
    if cfg.trainer.get("accelerator") == "cpu" and "16" in precision:  # bf16 / fp16, mixed or true
        warnings.warn(
            f"trainer.precision={precision} on CPU is ~25x slower than 32-true; "
            "use hardware=cpu (32-true) unless you are measuring it",
            stacklevel=3,
        )
    warmup = (cfg.model.get("lr_scheduler") or {}).get("num_warmup_steps", 0)
    steps = cfg.trainer.get("max_steps", -1)
    if warmup and steps > 0 and warmup >= steps:  # a quick try of an article's config, often
        warnings.warn(
            f"model.lr_scheduler.num_warmup_steps={warmup} >= trainer.max_steps={steps}: the lr "
            f"never leaves its warm-up (it ends at {steps / warmup:.0%} of model.optimizer.lr)",
            stacklevel=3,
        )
    model = cfg.model
    check_module_options(
        model.get("snr_gamma"), model.get("noise_offset", 0.0), model.get("class_embedding_lr"),
        **{k: model.get(k, False) for k in ("gradient_checkpointing", "channels_last", "compile")},
    )  # fmt: skip
    ours = str(cfg.data.get("_target_", "")).endswith("ImageDataModule")
    if ours:
        check_data_options(cfg.data)
    check_guidance_config(cfg.get("guidance"))  # the sample grids' guided panels
    ema = cfg.get("ema")
    if ema is not None and str(ema.get("_target_", "")).endswith("ema.EMA"):
        check_ema_options(*(ema.get(k) for k in EMA_KEYS))
    unet_config = unet_config_of(cfg.model)  # a hub id's through diffusers
    check_image_size(cfg.data.get("image_size"), unet_config)
    labelled = [] if cfg.data.get("label_column") else None  # the names come with the data
    if ours and cfg.data.get("source") == "imagefolder" and cfg.data.get("label_column"):
        labelled = class_folders(Path(cfg.data.data_dir).expanduser())  # a class each
    if ours and cfg.data.get("source") == "synthetic" and cfg.data.get("label_column"):
        labelled = list(style_tuple(cfg.data.get("style")))  # a class a style
    check_conditioning(
        unet_config, cfg.model.get("conditioning"), labelled, cfg.model.get("p_uncond", 0.1)
    )


def check_train_parts(cfg: DictConfig) -> None:
    """What needs torch or Lightning: the optimizer's arguments (torch alone), the loggers, the
    objective among the callbacks' metrics."""
    check_optimizer(cfg.model.optimizer)
    from difftune.run.loggers import check_loggers  # here: the values above need none of
    from difftune.run.objective import check_objective  # these (seconds to import)

    check_loggers(cfg)
    check_objective(cfg)
