"""The values of `data.*` that are checked without any data, torch or Lightning: the first checks
of `ImageDataModule`, and of the preflight of every job of a command line."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difftune.data.folders import IMAGE_EXTENSIONS, class_folders, has_image_file
from difftune.errors import DifftuneError, require_int

SOURCES = ("synthetic", "hf", "imagefolder")
STYLES = ("photo", "vintage", "cyanotype")  # the synthetic scenes' looks (synthetic.py renders)
INTEGERS = {  # key: (minimum, null allowed)
    "batch_size": (1, False), "num_workers": (0, False), "val_size": (0, True),
    "num_images": (1, False), "seed": (0, False), "max_images": (1, True),
    "shuffle_buffer": (1, False), "prefetch_factor": (1, True),
}  # fmt: skip


def check_data_options(options: Mapping[str, Any]) -> None:
    """One line for the first bad value among `options` (the keys given; `source` with the keys
    it needs when it is given)."""
    source = options.get("source")
    if "source" in options and source not in SOURCES:
        raise DifftuneError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")
    for key, (minimum, nullable) in INTEGERS.items():
        if key in options:
            require_int(f"data.{key}", options[key], minimum, allow_none=nullable)
    for key, nullable in (("flip", False), ("streaming", False), ("persistent_workers", True),
                          ("pin_memory", True)):  # fmt: skip
        value = options.get(key)
        if key in options and not (isinstance(value, bool) or nullable and value is None):
            valid = "true, false or null (automatic)" if nullable else "true or false"
            raise DifftuneError(f"data.{key}={value!r}: expected {valid}")
    if "style" in options:
        check_styles(options["style"])
    if source == "synthetic" and "num_images" in options:
        n = min(options["num_images"], options.get("max_images") or options["num_images"])
        check_val_size(n, options.get("val_size"))
    if "source" in options:
        check_label_column(source, options.get("label_column"))
    if options.get("streaming") and source != "hf":
        raise DifftuneError(
            f"data.streaming=true with data.source={source!r}: only hub datasets (data=hf, "
            "vintage_faces, wikiart) stream; a folder is on disk already"
        )
    dataset_name, data_dir = options.get("dataset_name"), options.get("data_dir")
    if source == "hf" and not dataset_name:
        raise DifftuneError(
            f"data.dataset_name={dataset_name!r}: data.source=hf needs a dataset, e.g. "
            "data.dataset_name=Norod78/Vintage-Faces-FFHQAligned or a local dataset dir"
        )
    if source == "imagefolder":
        if not data_dir:
            raise DifftuneError(
                f"data.data_dir={data_dir!r}: data=imagefolder needs the folder of images, "
                "e.g. data.data_dir=/path/to/images"
            )
        if not Path(data_dir).expanduser().is_dir():
            raise DifftuneError(f"data.data_dir={data_dir!r} is not an existing directory")
        if not has_image_file(Path(data_dir).expanduser()):
            raise DifftuneError(
                f"data.data_dir={data_dir!r} contains no image files "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        if options.get("label_column") == "label":
            class_folders(Path(data_dir).expanduser())


def check_val_size(n: int, val_size: int | None) -> None:
    """One line for an explicit `val_size` that holds out all n images (null: a share of them)."""
    if val_size is not None and n > 0 and val_size >= n:
        raise DifftuneError(
            f"data.val_size={val_size}: the data has {n} image{'s' if n != 1 else ''}, so none "
            f"would be left to train on; valid: 0 to {n - 1} (data.val_size=null holds out 5%, "
            "4 to 64)"
        )


def style_tuple(style: str | Sequence[str]) -> tuple[str, ...]:
    """`data.style` as a tuple of styles: one name, or a list of them (one class each)."""
    return (style,) if isinstance(style, str) else tuple(style)


def check_styles(style: str | Sequence[str]) -> tuple[str, ...]:
    """`data.style` as a tuple of known styles, each once; one line naming them otherwise."""
    styles = style_tuple(style)
    if not styles or len(set(styles)) < len(styles) or not set(styles) <= set(STYLES):
        raise DifftuneError(
            f"data.style={style!r} is not one of {', '.join(STYLES)} (or a list of them, each once)"
        )
    return styles


#: the `data.label_column` each source accepts (hf: any column of the dataset)
LABEL_COLUMNS = {"synthetic": "style", "imagefolder": "label"}


def check_label_column(source: str, label_column: str | None) -> None:
    """One line unless `label_column` is None, the source's own (style, label) or any for hf."""
    valid = LABEL_COLUMNS.get(source)
    if label_column is not None and valid and label_column != valid:
        raise DifftuneError(
            f"data.label_column={label_column!r} is not one of {valid} "
            f"(data.source={source} labels each image by its {valid})"
        )
