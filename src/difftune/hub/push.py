"""`push_to_hub`: upload a finished local pipeline export to the Hugging Face Hub.

Call it only after the local export is complete (`export_pipeline`, then `write_model_card`):
a failed push then costs nothing but a retry, and its error says how to retry. The token is
passed through to huggingface_hub and never logged, written or put in an error message.
"""

import logging
from pathlib import Path

from huggingface_hub import create_repo, upload_folder
from huggingface_hub.errors import (
    HFValidationError,
    HTTPError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
)

from difftune.errors import DifftuneError

log = logging.getLogger(__name__)

# What a push raises without a network, a token or write access, as huggingface_hub types them
PUSH_ERRORS = (
    HTTPError,  # its transport's base: connection errors and HfHubHTTPError (401, 403, 404, ...)
    LocalTokenNotFoundError,  # no login and no HF_TOKEN
    OfflineModeIsEnabled,  # HF_HUB_OFFLINE=1
    HFValidationError,  # an invalid repo id
    OSError,  # a file of the export it cannot read
)


def retry_hint(pipeline_dir: str | Path, repo_id: str) -> str:
    return (
        f"log in (`hf auth login` or set HF_TOKEN), then run "
        f"`python -m difftune.hub.export --pipeline {pipeline_dir} --push-to-hub {repo_id}` "
        f"or `hf upload {repo_id} {pipeline_dir}`"
    )


def _reason(err: BaseException, token: str | None) -> str:
    text = str(err).strip()
    reason = text.splitlines()[0][:200] if text else type(err).__name__
    if token:
        reason = reason.replace(token, "***")
    return f"{type(err).__name__}: {reason}"


def push_to_hub(
    pipeline_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload DDPMPipeline fine-tuned with difftune",
) -> str:
    """Create `repo_id` if needed and upload `pipeline_dir` to it; return the repo URL.

    `pipeline_dir` must be a complete local export (it has `model_index.json`). Any hub or
    network failure becomes a one-line `DifftuneError` that says the local export is complete
    and how to retry. `token=None` uses the login or HF_TOKEN, as huggingface_hub does.
    """
    pipeline_dir = Path(pipeline_dir)
    if not (pipeline_dir / "model_index.json").is_file():
        raise DifftuneError(
            f"push_to_hub: {pipeline_dir} is not a complete pipeline export (no model_index.json)"
        )
    try:
        url = create_repo(repo_id, exist_ok=True, private=private, token=token)
        upload_folder(
            repo_id=repo_id,
            folder_path=str(pipeline_dir),
            commit_message=commit_message,
            token=token,
        )
    except PUSH_ERRORS as err:
        raise DifftuneError(
            f"push to the Hub repo '{repo_id}' failed ({_reason(err, token)}); "
            f"the local export at {pipeline_dir} is complete; to retry, "
            f"{retry_hint(pipeline_dir, repo_id)}"
        ) from err
    url = str(url) if url else f"https://huggingface.co/{repo_id}"
    log.info("pipeline pushed to %s", url)
    return url
