"""`python -m difftune.hub.export CKPT`: turn a difftune Lightning checkpoint into a DDPMPipeline.

    python -m difftune.hub.export outputs/train/<run>/checkpoints/last.ckpt          # EMA weights
    python -m difftune.hub.export <run>/checkpoints/last.ckpt --raw --out raw_pipe   # raw weights
    python -m difftune.hub.export some.ckpt --base google/ddpm-celebahq-256          # outside a run
    python -m difftune.hub.export --pipeline <run>/pipeline --push-to-hub me/my-ddpm # push again

The UNet is rebuilt from the run's `.hydra/config.yaml` when the checkpoint sits in
`<run>/checkpoints/`, else from `--base` (or the checkpoint's `pretrained` hyperparameter), and
the weights are loaded strictly. The output path is printed; errors are one line, exit status 2.
"""

import argparse
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import hydra
import torch
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from omegaconf import OmegaConf

from difftune.core.conditioning import add_class_embedding
from difftune.errors import DifftuneError
from difftune.hub.checkpoints import state_dict_mismatch
from difftune.hub.model_card import dataset_name, write_model_card
from difftune.hub.pipelines import export_pipeline, load_noise_scheduler, load_unet
from difftune.hub.push import push_to_hub
from difftune.run.cli import exit_on_user_error, user_error
from difftune.run.disk import reported_writes
from difftune.run.final_metrics import read_final_metrics
from difftune.run.run_dir import check_export_dir

PREFIX = "unet."


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, unpickled with `weights_only=True` (no code from the file runs).

    difftune checkpoints hold only tensors, numbers, strings and plain containers (hparams are
    `pretrained` and `seed`), so the safe loader reads them whole; a checkpoint it rejects is
    not one of ours, and we refuse it rather than unpickle arbitrary objects.
    """
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DifftuneError(
            f"checkpoint {path} {what}; pass a .ckpt file (e.g. <run>/checkpoints/last.ckpt)"
        )
    if not zipfile.is_zipfile(path):  # torch's unpickler reads other bytes as opcodes and fails
        raise DifftuneError(  # in any way (KeyError for a text file)
            f"checkpoint {path} cannot be read (not a torch file: torch.save writes a zip archive)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        rejected = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if rejected is None:  # torch reports any unreadable file as an unpickling error
            raise DifftuneError(f"checkpoint {path} cannot be read (not a torch file)") from err
        raise DifftuneError(
            f"checkpoint {path} holds a {rejected.group(1)} object, which the safe loader "
            "(weights_only=True) refuses to unpickle: it is not a difftune checkpoint"
        ) from err
    except (RuntimeError, OSError, EOFError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DifftuneError(f"checkpoint {path} cannot be read ({reason})") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DifftuneError(f"checkpoint {path} has no state_dict: not a Lightning checkpoint")
    return checkpoint


def unet_weights(checkpoint: dict[str, Any], path: Path, raw: bool) -> dict[str, torch.Tensor]:
    """The UNet's weights: the EMA average (`state_dict`) or, with `raw`, the raw weights."""
    source = "state_dict"
    if raw:
        if "current_model_state" in checkpoint:
            source = "current_model_state"
        else:  # no EMA: the state_dict is the raw weights already
            note = f"note: {path} was trained without EMA; its weights are the raw ones"
            print(note, file=sys.stderr)
    weights = {
        key.removeprefix(PREFIX): value
        for key, value in checkpoint[source].items()
        if key.startswith(PREFIX)
    }
    if not weights:
        raise DifftuneError(f"checkpoint {path} has no '{PREFIX}*' weights in its {source}")
    return weights


def run_dir_of(ckpt: Path) -> Path | None:
    """`<run>` when the checkpoint is `<run>/checkpoints/x.ckpt` and the run kept its config."""
    run = ckpt.resolve().parent.parent
    if ckpt.resolve().parent.name == "checkpoints" and (run / ".hydra" / "config.yaml").is_file():
        return run
    return None


def build_from_run(run: Path) -> tuple[UNet2DModel, SchedulerMixin]:
    """The UNet and noise scheduler as the run built them (`cfg.model.unet`, ...)."""
    config = run / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    try:
        unet = hydra.utils.instantiate(cfg.model.unet)
        scheduler = hydra.utils.instantiate(cfg.model.noise_scheduler)
    except Exception as err:
        cause = user_error(err) or err
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise DifftuneError(
            f"cannot rebuild the UNet from {config} ({reason}); "
            f"pass --base <pipeline dir or hub id> to rebuild it from another pipeline"
        ) from err
    return unet, scheduler


def build_from_base(base: str) -> tuple[UNet2DModel, SchedulerMixin]:
    return load_unet(base, key="--base"), load_noise_scheduler(base, key="--base")


def load_strictly(unet: UNet2DModel, weights: dict[str, torch.Tensor], path: Path, built: str):
    """All of the checkpoint's weights into `unet`, or a one-line error: never a partial load."""
    missing, unexpected, reshaped = state_dict_mismatch(unet.state_dict(), weights)
    if missing or unexpected or reshaped:
        problems = [
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for keys, what in [
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (reshaped, "keys with another shape"),
            ]
            if keys
        ]
        raise DifftuneError(
            f"checkpoint {path} does not fit the UNet built from {built}: {', '.join(problems)}; "
            f"it comes from another architecture: pass --base <the pipeline it was trained from>"
        )
    unet.load_state_dict(weights, strict=True)


def export_checkpoint(
    ckpt: str | Path, out: str | Path | None = None, *, raw: bool = False, base: str | None = None
) -> Path:
    """Export a checkpoint's UNet (EMA weights unless `raw`) as a pipeline; return its dir."""
    ckpt = Path(ckpt)
    run = run_dir_of(ckpt)
    if out is None:
        out = (run or ckpt.resolve().parent) / f"pipeline_from_{ckpt.stem}"
    out = Path(out)
    check_export_dir(out)
    checkpoint = load_checkpoint(ckpt)
    weights = unet_weights(checkpoint, ckpt, raw)
    if base is None and run is not None:
        unet, scheduler = build_from_run(run)
        built = str(run / ".hydra" / "config.yaml")
    else:
        base = base or (checkpoint.get("hyper_parameters") or {}).get("pretrained")
        if not base:
            raise DifftuneError(
                f"checkpoint {ckpt} is not in a run dir with .hydra/config.yaml and names no "
                "base model: pass --base <pipeline dir or hub id with the same architecture>"
            )
        unet, scheduler = build_from_base(str(base))
        built = str(base)
    class_names = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    if class_names:  # a conditional run: its class embedding, then its weights
        unet = add_class_embedding(unet, class_names)
    load_strictly(unet, weights, ckpt, built)
    facts = run_facts(run, ckpt, checkpoint, raw, base)
    facts["class_names"] = list(class_names) if class_names else None
    if facts["image_size"]:  # the pipeline samples at the resolution it was trained at
        unet.register_to_config(sample_size=int(facts["image_size"]))
    kept = "the last complete export there stays loadable; free space and run this again"
    with reported_writes(out, "the pipeline", then=kept):
        path = export_pipeline(unet.eval(), scheduler, out)
        write_model_card(path, **facts)
    return path


def run_facts(
    run: Path | None, ckpt: Path, checkpoint: dict[str, Any], raw: bool, base: str | None
) -> dict[str, Any]:
    """The model card's facts: from the run's `config_resolved.yaml` when there is one."""
    resolved = run / "config_resolved.yaml" if run is not None else None
    cfg = OmegaConf.load(resolved) if resolved and resolved.is_file() else OmegaConf.create({})

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key, default=None)

    step = int(checkpoint.get("global_step", 0))
    grid = run / "samples" / f"step_{step:06d}.png" if run is not None else None
    final = run / "final_metrics.json" if run is not None else None
    at_the_end = final is not None and final.is_file() and ckpt.name == "last.ckpt"
    processes = [get("trainer.devices"), get("trainer.num_nodes")]
    batch = (get("data.batch_size") or 0) * (get("trainer.accumulate_grad_batches") or 1)
    for count in processes:
        batch *= count if isinstance(count, int) and count > 0 else 1
    return dict(
        base_model=get("model.pretrained") or base,
        dataset=dataset_name(cfg.data) if "data" in cfg else None,
        steps=step,
        effective_batch=batch,
        lr=get("model.optimizer.lr") or 0.0,
        precision=str(get("trainer.precision") or "unknown"),
        ema=None if raw or not get("ema") else get("ema.decay"),
        metrics=read_final_metrics(final) if at_the_end else {},
        sample_grid=grid if grid is not None and grid.is_file() else None,
        image_size=get("data.image_size"),
    )


def reexport_hint(ckpt: Path | None, out: str | Path) -> str:
    """After a failed export of a run to `out`: what is kept, and the command that redoes it."""
    if ckpt is None or not ckpt.is_file():
        return "the last complete export there stays loadable; no checkpoint holds these weights"
    return (
        f"the last complete export there stays loadable; the weights are in {ckpt}: free space, "
        f"then python -m difftune.hub.export {ckpt} --out {out}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m difftune.hub.export",
        description="Export a difftune checkpoint as a diffusers DDPMPipeline; optionally push it.",
    )
    parser.add_argument("ckpt", nargs="?", type=Path, help="a Lightning .ckpt saved by difftune")
    parser.add_argument("--out", type=Path, help="default: <run>/pipeline_from_<ckpt stem>")
    parser.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    parser.add_argument("--base", help="pipeline dir or hub id to rebuild the UNet from")
    parser.add_argument("--pipeline", type=Path, help="push this existing export (no CKPT)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the export to the Hub")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    if (args.ckpt is None) == (args.pipeline is None):
        parser.error("give either CKPT or --pipeline DIR")
    if args.pipeline is not None and not args.push_to_hub:
        parser.error("--pipeline needs --push-to-hub REPO_ID")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> Path:
    """The command; returns the pipeline dir. Hub login: `hf auth login` or HF_TOKEN."""
    args = parse_args(argv)
    if args.pipeline is not None:
        out = args.pipeline
    else:
        out = export_checkpoint(args.ckpt, args.out, raw=args.raw, base=args.base)
        print(out, flush=True)
    if args.push_to_hub:  # only now: the local export is complete
        print(push_to_hub(out, args.push_to_hub, private=args.private), flush=True)
    return out


if __name__ == "__main__":
    main()
