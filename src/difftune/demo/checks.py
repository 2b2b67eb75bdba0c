"""The demo's start checks: its keys, the page's starting values, the starting pipeline and the
port, before Gradio loads."""

import errno
import re
import socket
from typing import Any

from omegaconf import DictConfig, ListConfig

from difftune.demo.request import GUIDANCES, SCHEDULERS, SCHEDULES
from difftune.errors import DifftuneError, is_int_at_least, is_number
from difftune.hub.pipelines import load_unet_config
from difftune.run.checks import check_device, check_seed

MAX_PORT = 65535
HEX_RGB = re.compile(r"#[0-9a-fA-F]{6}")  # what the page's colour picker takes


def check_port(host: str, port: int) -> None:
    """One line, before anything loads, when `host:port` cannot be served."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise DifftuneError(
                    f"port={port}: {host}:{port} is already in use; pass another port "
                    "(e.g. port=7861) or stop what holds it"
                ) from None
            raise DifftuneError(
                f"host={host} port={port}: cannot listen there ({error.strerror}); pass "
                "host=127.0.0.1 or another port"
            ) from None


def _shown(value: Any) -> str:
    """A value as the command line writes it: null, true/false, text bare."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DifftuneError(f"{key}={_shown(value)} is not one of {', '.join(choices)}")


def _count(key: str, value: Any, limit_key: str, limit: int) -> None:
    if not (is_int_at_least(value, 1) and value <= limit):
        raise DifftuneError(
            f"{key}={_shown(value)} must be an integer in 1..{limit} ({limit_key}={limit})"
        )


def check_page(cfg: DictConfig) -> None:
    """The page's starting values (`page.*`), each as its control would take it."""
    page = cfg.page
    _choice("page.guidance", page.guidance, GUIDANCES)
    _choice("page.scheduler", page.scheduler, SCHEDULERS)
    _choice("page.schedule", page.schedule, SCHEDULES)
    _count("page.num_images", page.num_images, "max_images", cfg.max_images)
    _count("page.num_inference_steps", page.num_inference_steps, "max_steps", cfg.max_steps)
    check_seed(page.seed, key="page.seed")
    if not is_number(page.scale):
        raise DifftuneError(f"page.scale={_shown(page.scale)} must be a finite number (e.g. 40)")
    if not (isinstance(page.colour, str) and HEX_RGB.fullmatch(page.colour)):
        raise DifftuneError(
            f"page.colour={_shown(page.colour)} must be a hex colour #rrggbb, quoted for Hydra "
            "and the shell: 'page.colour=\"#cc6699\"'"
        )
    if not isinstance(page.through_unet, bool):
        raise DifftuneError(f"page.through_unet={_shown(page.through_unet)} must be true or false")
    if isinstance(page.prompt, DictConfig | ListConfig):
        raise DifftuneError(f"page.prompt={_shown(page.prompt)} must be text, not a list or a map")


def check_demo_config(cfg: DictConfig) -> None:
    """The demo's own keys, the page's starting values and the starting pipeline's config.json,
    before the page starts."""
    if not (is_int_at_least(cfg.get("port"), 1) and cfg.port <= MAX_PORT):
        raise DifftuneError(f"port={_shown(cfg.get('port'))} must be an integer in 1..{MAX_PORT}")
    for key in ("stream_every", "max_images", "max_steps"):
        value = cfg.get(key)
        if not is_int_at_least(value, 1):
            raise DifftuneError(f"{key}={value!r} must be an integer >= 1")
    check_device(cfg.device)
    check_page(cfg)
    load_unet_config(cfg.pretrained, key="pretrained")  # a bad path or hub id: one line
    check_port(cfg.host, cfg.port)
