"""The demo's start checks: its keys, the starting pipeline and the port, before Gradio loads."""

import errno
import socket

from omegaconf import DictConfig

from difftune.errors import DifftuneError
from difftune.hub.pipelines import load_unet_config


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


def check_demo_config(cfg: DictConfig) -> None:
    """The demo's own keys, and the starting pipeline's config.json, before the page starts."""
    for key, low in (("port", 1), ("stream_every", 1), ("max_images", 1), ("max_steps", 1)):
        value = cfg.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise DifftuneError(f"{key}={value!r} must be an integer >= {low}")
    load_unet_config(cfg.pretrained, key="pretrained")  # a bad path or hub id: one line
    check_port(cfg.host, cfg.port)
