"""A folder of bad images trains, and its skips are reported with reasons, each file once."""

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from difftune.callbacks.skipped_images import LIST_NAME, SkipReport
from difftune.run.train import train
from helpers.compose import compose_train, shrink
from helpers.images import write_mixed_folder


def test_a_folder_of_bad_images_trains_and_names_each_skipped_file_once(tmp_path, caplog):
    folder = tmp_path / "images"
    write_mixed_folder(folder)  # 7 convertible modes + truncated, zero-byte, text-as-png
    Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / "tiny.png")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(folder / f"ok{i}.png")
    big = Image.new("RGB", (200, 200), (1, 2, 3))
    big.save(folder / "bomb.png")  # over the limit set below: PIL's decompression-bomb error
    cfg = shrink(
        compose_train("data=imagefolder", f"data.data_dir={folder}", "data.val_size=8",
                      "data.batch_size=4", "data.image_size=32", output_dir=tmp_path / "run"),
        steps=8,
    )  # fmt: skip
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 200 * 200 // 2 - 1  # PIL raises above 2x this
    try:
        with caplog.at_level(logging.DEBUG, logger="difftune.callbacks.skipped_images"):
            train(cfg)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    reports = [m for m in warned if "undecodable images" in m]
    assert [r.split(":")[0] for r in reports] == ["epoch 0"]  # one line, not one per image
    held_out = [m for m in warned if "undecodable held-out" in m]
    assert held_out and all(r.startswith("validation at step ") for r in held_out)
    again = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "epoch 1: skipped the 3 undecodable images named before" in again, again
    text = " ".join(reports + held_out)
    for reason in ("truncated", "empty file", "unreadable", "decompression bomb"):
        assert reason in text, (reason, reports)
    # each report names its first files and where all of them are listed
    listed = tmp_path / "run" / "skipped_images.txt"
    assert all(f"all listed in {listed}" in r for r in reports)
    assert any(name in text for name in ("truncated.jpg", "empty.png", "text.png", "bomb.png"))
    rows = [line.split("\t") for line in listed.read_text().splitlines()]
    assert {row[0] for row in rows} == {"train", "val"}  # held-out skips are reported too
    assert len({row[3] for row in rows}) == len(rows)  # each file once, over all epochs
    assert {Path(row[3]).name for row in rows} == {
        "truncated.jpg",
        "empty.png",
        "text.png",
        "bomb.png",
    }
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()


def test_odd_file_names_stay_one_line_of_the_list(tmp_path, caplog):
    """Tabs and newlines in names (legal on Linux), and names that are not UTF-8."""
    names = ["bad\tTAB.jpg", "bad\nNL.jpg", "back\\slash.jpg", os.fsdecode(b"latin\xe9.jpg")]
    batch = {"skipped": ["unreadable"] * 4, "skipped_files": [f"/d/{n}" for n in names]}
    report = SkipReport()
    report.add("train", batch)
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), is_global_zero=True)
    with caplog.at_level(logging.WARNING, logger="difftune.callbacks.skipped_images"):
        report.flush("train", "epoch 0", trainer)
    rows = [line.split("\t") for line in (tmp_path / LIST_NAME).read_text().splitlines()]
    assert [row[3] for row in rows] == [
        "/d/bad\\tTAB.jpg", "/d/bad\\nNL.jpg", "/d/back\\\\slash.jpg", "/d/latin\\udce9.jpg",
    ]  # fmt: skip
    assert caplog.records[0].getMessage().count("\n") == 0


def test_a_file_skipped_again_is_not_named_again_but_a_new_one_is(tmp_path, caplog):
    report = SkipReport()
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), is_global_zero=True)
    with caplog.at_level(logging.WARNING, logger="difftune.callbacks.skipped_images"):
        report.add("train", {"skipped": ["truncated", "unreadable"], "skipped_files": ["/a", "/b"]})
        report.flush("train", "epoch 0", trainer)
        report.add("train", {"skipped": ["truncated", "empty file"], "skipped_files": ["/a", "/c"]})
        report.flush("train", "epoch 1", trainer)
        report.add("train", {"skipped": ["truncated"], "skipped_files": ["/a"]})
        report.flush("train", "epoch 2", trainer)
        report.add("val", {"skipped": ["truncated"], "skipped_files": ["/a"]})  # another split
        report.flush("val", "validation at step 9", trainer)
    assert [r.getMessage() for r in caplog.records] == [
        f"epoch 0: skipped 2 undecodable images (1 truncated, 1 unreadable): a, b; all listed in "
        f"{tmp_path / LIST_NAME}",
        f"epoch 1: skipped 1 undecodable images (1 empty file): c (and 1 named before); all "
        f"listed in {tmp_path / LIST_NAME}",
        f"validation at step 9: skipped 1 undecodable held-out images (1 truncated): a; all "
        f"listed in {tmp_path / LIST_NAME}",
    ]
    rows = [line.split("\t") for line in (tmp_path / LIST_NAME).read_text().splitlines()]
    assert [(row[0], row[3]) for row in rows] == [
        ("train", "/a"), ("train", "/b"), ("train", "/c"), ("val", "/a"),
    ]  # fmt: skip
