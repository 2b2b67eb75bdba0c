"""Push to the Hub: repo then upload, never an incomplete export, every failure one line."""

import logging
import shutil
from pathlib import Path

import huggingface_hub
import pytest

import difftune.hub.push as hub
from difftune.errors import DifftuneError
from difftune.hub.model_card import write_model_card
from helpers.model_cards import card_args


@pytest.fixture
def exported(tmp_path, tiny_pipeline_dir) -> Path:
    """A complete local export: the pipeline plus its card."""
    pipe = tmp_path / "export"
    shutil.copytree(tiny_pipeline_dir, pipe)
    write_model_card(pipe, **card_args(tmp_path))
    return pipe


def test_push_to_hub_creates_the_repo_then_uploads_the_folder(exported, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(
        hub, "create_repo", lambda *a, **kw: calls.append(("create", a, kw)) or "https://hf.co/me/x"
    )
    monkeypatch.setattr(hub, "upload_folder", lambda *a, **kw: calls.append(("upload", a, kw)))
    with caplog.at_level(logging.DEBUG):
        url = hub.push_to_hub(exported, "me/x", private=True, token="hf_secret123")
    assert url == "https://hf.co/me/x"
    assert calls[0] == (
        "create", ("me/x",), dict(exist_ok=True, private=True, token="hf_secret123")
    )  # fmt: skip
    name, args, kwargs = calls[1]
    assert name == "upload" and not args
    assert kwargs["repo_id"] == "me/x" and Path(kwargs["folder_path"]) == exported
    assert kwargs["token"] == "hf_secret123" and kwargs["commit_message"]
    assert "hf_secret123" not in caplog.text
    files = [p for p in exported.rglob("*") if p.is_file()]
    assert not any(b"hf_secret123" in p.read_bytes() for p in files)


def test_push_to_hub_refuses_an_incomplete_export(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "create_repo", lambda *a, **kw: pytest.fail("pushed"))
    with pytest.raises(DifftuneError, match="not a complete pipeline export"):
        hub.push_to_hub(tmp_path, "me/x")


def check_push_error(err: DifftuneError, exported: Path, token: str | None = None) -> None:
    message = str(err)
    assert "\n" not in message
    assert f"the local export at {exported} is complete" in message
    assert "`hf auth login`" in message and "HF_TOKEN" in message  # huggingface_hub's CLI now
    assert f"python -m difftune.hub.export --pipeline {exported} --push-to-hub me/x" in message
    assert f"`hf upload me/x {exported}`" in message
    if token:
        assert token not in message


@pytest.mark.parametrize(
    "error",
    [
        huggingface_hub.errors.LocalTokenNotFoundError("Token is required\nsecond line"),
        OSError("hf_secret123 rejected"),
        ConnectionError("Name or service not known"),
    ],
)
def test_push_to_hub_failure_says_the_export_is_complete(exported, monkeypatch, error):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(hub, "create_repo", failing)
    with pytest.raises(DifftuneError) as info:
        hub.push_to_hub(exported, "me/x", token="hf_secret123")
    check_push_error(info.value, exported, token="hf_secret123")


def test_push_to_hub_offline_for_real(exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DifftuneError, match="OfflineModeIsEnabled") as info:
        hub.push_to_hub(exported, "me/x")
    check_push_error(info.value, exported)
