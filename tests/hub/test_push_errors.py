"""`push_to_hub` turns huggingface_hub's error types into one line, and nothing else."""

import importlib
import shutil

import huggingface_hub.errors as hub_errors
import pytest

import difftune.hub.push as hub
from difftune.errors import DifftuneError

TRANSPORT = importlib.import_module(hub_errors.HTTPError.__module__)  # httpx2 in huggingface_hub 2


def response(status: int):
    return TRANSPORT.Response(status, request=TRANSPORT.Request("POST", "https://huggingface.co"))


ERRORS = [
    hub_errors.HfHubHTTPError("401 Client Error: Unauthorized", response=response(401)),
    hub_errors.RepositoryNotFoundError("404 Client Error: Not Found", response=response(404)),
    TRANSPORT.ConnectError("[Errno -3] Temporary failure in name resolution"),  # no network
    hub_errors.LocalTokenNotFoundError("Token is required"),
    hub_errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1"),
    hub_errors.HFValidationError("Repo id must be in the form 'repo_name'"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_each_hub_error_becomes_one_line_naming_it(tmp_path, tiny_pipeline_dir, monkeypatch, error):
    export = shutil.copytree(tiny_pipeline_dir, tmp_path / "export")

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(hub, "upload_folder", failing)
    monkeypatch.setattr(hub, "create_repo", lambda *a, **kw: None)
    with pytest.raises(DifftuneError) as info:
        hub.push_to_hub(export, "me/x")
    message = str(info.value)
    assert "\n" not in message and f"({type(error).__name__}: " in message
    assert f"the local export at {export} is complete" in message


def test_a_bug_is_not_dressed_as_a_hub_failure(tmp_path, tiny_pipeline_dir, monkeypatch):
    export = shutil.copytree(tiny_pipeline_dir, tmp_path / "export")
    monkeypatch.setattr(hub, "create_repo", lambda *a, **kw: [][0])
    with pytest.raises(IndexError):
        hub.push_to_hub(export, "me/x")
