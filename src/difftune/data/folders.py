"""A folder of images, listed without any data library: which files are images, and all of them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from difftune.errors import DifftuneError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif",
    ".jp2", ".ppm", ".pgm", ".pbm", ".tga",
)  # fmt: skip


def _files(data_dir: str | Path) -> Iterator[Path]:
    """The files under `data_dir`, recursive through linked folders (each real folder once, the
    first link in sorted order wins), hidden files and folders left out."""
    seen: set[str] = set()
    for top, dirs, names in os.walk(data_dir, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree, or a second link to one folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = Path(top, name)
            if not name.startswith(".") and path.is_file():
                yield path


def is_image_file(path: Path) -> bool:
    """Whether the file's extension is one an image folder reads."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def has_image_file(data_dir: str | Path) -> bool:
    """Whether `data_dir` holds at least one image file (stops at the first)."""
    return any(is_image_file(path) for path in _files(data_dir))


# Not datasets' load_dataset("imagefolder"): it takes subfolders named train/, test/ for splits and
# drops the others (tests/data/test_folder_listing.py); a user's folder is read whole.
def list_image_files(data_dir: str | Path) -> list[str]:
    """Image files under `data_dir`: recursive through linked folders (each real folder once),
    sorted, hidden files and folders left out; the log says how many other files were."""
    files, others = [], []
    for path in _files(data_dir):
        (files if is_image_file(path) else others).append(path)
    root = Path(data_dir)
    if others:
        log.info(
            "data.data_dir=%s: %d files without an image extension left out (e.g. %s)",
            data_dir, len(others), others[0].relative_to(root),
        )  # fmt: skip
    return [str(p) for p in sorted(files, key=lambda p: p.relative_to(root).as_posix())]


def class_folders(data_dir: str | Path) -> list[str]:
    """The classes of `data.label_column=label`: the first-level sub-folders of `data_dir` that
    hold images (at any depth), sorted; one line when images lie directly in `data_dir` (they
    would have no class)."""
    root = Path(data_dir)
    entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    loose = [e.name for e in entries if e.is_file() and is_image_file(e)]
    if loose:
        raise DifftuneError(
            f"data.data_dir={str(data_dir)!r} holds {len(loose)} images directly (e.g. "
            f"{loose[0]}): with data.label_column=label every image goes in the sub-folder of "
            "its class (data_dir/<class>/<image>)"
        )
    return [e.name for e in entries if e.is_dir() and has_image_file(e)]
