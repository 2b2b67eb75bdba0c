"""The model card: front matter, the run's facts, the sample grid and the lines that load it."""

import pytest

from difftune.errors import DifftuneError
from difftune.hub.model_card import write_model_card
from helpers.model_cards import card_args, split_card


def test_model_card_has_front_matter_facts_grid_and_load_lines(tmp_path):
    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    card = write_model_card(pipe, **card_args(tmp_path), image_size=128, repo_id="me/vintage-ddpm")
    assert card == pipe / "README.md"
    meta, body = split_card(card.read_text())
    assert meta["library_name"] == "diffusers"
    assert meta["tags"] == ["pytorch", "diffusers", "unconditional-image-generation", "difftune"]
    assert meta["base_model"] == "google/ddpm-celebahq-256"
    assert meta["datasets"] == ["huggan/vintage-faces"]
    assert "license" not in meta
    for fact in [
        "google/ddpm-celebahq-256", "huggan/vintage-faces", "| steps | 300 |",
        "| effective batch | 16 |", "| learning rate | 1e-05 |", "| precision | bf16-mixed |",
        "| EMA | on (decay 0.999) |", "| train/loss | 0.0312 |", "| val/loss | 0.04567 |",
        "| resolution | 128 px |",
    ]:  # fmt: skip
        assert fact in body, fact
    lines = body.splitlines()
    load = lines.index("from diffusers import DDPMPipeline")
    assert lines[load + 1] == 'pipe = DDPMPipeline.from_pretrained("me/vintage-ddpm")'
    assert lines[load + 2] == "image = pipe().images[0]"
    assert "![samples](samples.png)" in body
    assert (pipe / "samples.png").read_bytes() == card_args(tmp_path)["sample_grid"].read_bytes()


def test_model_card_for_a_local_base_without_ema_grid_or_repo(tmp_path, tiny_pipeline_dir):
    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    args = card_args(
        tmp_path, base_model=str(tiny_pipeline_dir), dataset=str(tmp_path / "images"), ema=None,
        sample_grid=None, metrics={}, precision="32-true",
    )  # fmt: skip
    card = write_model_card(pipe, **args, license="mit")
    meta, body = split_card(card.read_text())
    assert "base_model" not in meta and "datasets" not in meta  # local paths are not hub ids
    assert str(tiny_pipeline_dir) not in card.read_text()  # nor written into a shareable card
    assert "| base model | `a local pipeline (tiny_pipeline)` |" in body
    assert "| resolution | unknown |" in body
    assert meta["license"] == "mit"
    assert "| EMA | off |" in body and "No metrics were logged." in body
    assert f'DDPMPipeline.from_pretrained("{pipe.resolve()}")' in body
    assert "samples.png" not in body and not (pipe / "samples.png").exists()
    with pytest.raises(DifftuneError, match="does not exist"):
        write_model_card(pipe, **card_args(tmp_path, sample_grid=tmp_path / "none.png"))


def test_the_card_of_an_export_names_its_link_not_the_version_behind_it(tmp_path):
    """`<run>/pipeline` is a link to `.pipeline.export-<id>`, which the next export removes."""
    version = tmp_path / ".pipeline.export-abc123"
    version.mkdir()
    (tmp_path / "pipeline").symlink_to(version.name)
    card = write_model_card(tmp_path / "pipeline", **card_args(tmp_path)).read_text()
    assert f'DDPMPipeline.from_pretrained("{tmp_path / "pipeline"}")' in card
    assert "\n# pipeline\n" in card and "export-abc123" not in card


def test_model_card_does_not_tag_the_embedded_base_as_a_hub_model(tmp_path):
    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    card = write_model_card(pipe, **card_args(tmp_path, base_model="difftune/tiny_base"))
    meta, body = split_card(card.read_text())
    assert "base_model" not in meta and "difftune/tiny_base" in body
