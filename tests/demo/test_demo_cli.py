"""`python demo.py`: a bad pipeline, a busy port or a bad key is one line and exit 2."""

import socket

import pytest

from helpers.cli import run_cli


def test_a_pipeline_that_does_not_exist_is_one_line_before_the_page_starts(tmp_path):
    result = run_cli("pretrained=/no/such/pipeline", "port=7999", f"hydra.run.dir={tmp_path}",
                     script="demo.py")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: pretrained='/no/such/pipeline': no such directory")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "Running on" not in result.stdout


def test_a_busy_port_is_one_line(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(f"port={port}", f"hydra.run.dir={tmp_path}", script="demo.py")
    assert result.returncode == 2
    assert result.stderr == (
        f"error: port={port}: 127.0.0.1:{port} is already in use; pass another port "
        "(e.g. port=7861) or stop what holds it\n"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("stream_every=0", "error: stream_every=0 must be an integer >= 1\n"),
        ("port=99999", "error: port=99999 must be an integer in 1..65535\n"),
        (
            "page.scheduler=euler",
            "error: page.scheduler=euler is not one of ddim, ddpm, dpm_solver\n",
        ),
        ("prot=7860", "error: prot=7860: no such key"),
    ],
)
def test_a_bad_demo_key_is_one_line(tmp_path, override, message):
    result = run_cli(override, f"hydra.run.dir={tmp_path}", script="demo.py")
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
