"""A folder of images is read whole: why `list_image_files`, not `datasets`' imagefolder."""

import datasets
from PIL import Image

from difftune.data.folders import list_image_files


def test_a_folder_is_read_whole_where_datasets_imagefolder_reads_split_names(tmp_path, monkeypatch):
    """`load_dataset("imagefolder")` takes subfolders named train/ and test/ for splits and drops
    the others: 2 of 6 images in its train split here. Our listing keeps all 6 (hidden ones out)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    for sub in ("train", "test", "extra", ".ipynb_checkpoints"):
        (folder / sub).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(folder / sub / f"{i}.png")
    ours = list_image_files(folder)
    assert [p.split("/photos/")[1] for p in ours] == [
        "extra/0.png", "extra/1.png", "test/0.png", "test/1.png", "train/0.png", "train/1.png",
    ]  # fmt: skip
    theirs = datasets.load_dataset("imagefolder", data_dir=str(folder))
    assert {split: len(rows) for split, rows in theirs.items()} == {"train": 2, "test": 2}


def test_linked_folders_are_read_once_and_other_files_are_counted(tmp_path, caplog):
    """Path.rglob left linked sub-folders out; a link loop must not recurse."""
    real, folder = tmp_path / "real", tmp_path / "photos"
    real.mkdir()
    (folder / "own").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(real / f"{i}.png")
    Image.new("RGB", (8, 8)).save(folder / "own" / "a.JPE")
    (folder / "linked").symlink_to(real)
    (folder / "again").symlink_to(real)  # the same real folder a second time
    (folder / "own" / "loop").symlink_to(folder)
    (folder / "notes.txt").write_text("x")
    (folder / ".DS_Store").write_text("x")
    with caplog.at_level("INFO", logger="difftune.data.folders"):
        listed = list_image_files(folder)
    names = [p.split("/photos/")[1] for p in listed]
    assert names == ["again/0.png", "again/1.png", "again/2.png", "own/a.JPE"]  # sorted: first
    left_out = "1 files without an image extension left out (e.g. notes.txt)"
    assert f"data.data_dir={folder}: {left_out}" in caplog.text
