"""Guidance losses (colour, CLIP) and the `guidance` config group: built from flat keys, checked."""

import json
import warnings

import hydra
import open_clip
import pytest
import torch
from omegaconf import OmegaConf

import difftune.guidance.clip as clip_module
from difftune.core.sampling import sample
from difftune.errors import DifftuneError
from difftune.guidance import ClipLoss, ColorLoss, Guidance, GuidanceError
from difftune.metrics.features import ClipFeatures
from helpers.compose import CONF, compose_sample
from helpers.models import SCHEDULERS

GUIDANCE_OPTIONS = sorted(p.stem for p in (CONF / "guidance").glob("*.yaml"))
TINY_CLIP = "difftune-tiny-clip"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> torch.nn.Module:
    """A ~0.5M-parameter open_clip model (random weights) registered under TINY_CLIP."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    path = tmp_path_factory.mktemp("clip") / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip.create_model(TINY_CLIP).eval().requires_grad_(False)


def make_clip_loss(model, n_cuts=4, **kwargs) -> ClipLoss:
    return ClipLoss("a red rose", model_name=TINY_CLIP, n_cuts=n_cuts, model=model, **kwargs)


def test_clip_guidance_lowers_clip_loss(tiny_unet, noise, tiny_clip):
    def evaluate(x):  # many cuts, fixed augmentation randomness
        torch.manual_seed(123)
        with torch.no_grad():
            return make_clip_loss(tiny_clip, n_cuts=32)(x).item()

    unguided = sample(tiny_unet, SCHEDULERS["ddim"](), noise, 8)
    torch.manual_seed(0)
    g = Guidance(make_clip_loss(tiny_clip), scale=1000.0)
    guided = sample(tiny_unet, SCHEDULERS["ddim"](), noise, 8, guidance=g)
    assert evaluate(guided) < evaluate(unguided) - 0.005


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_clip_guided_images_repeat_with_the_generator_whatever_the_global_seed(
    tiny_unet, noise, tiny_clip, scheduler
):
    """The cut-outs draw from the sampling generator's seed, not torch's global RNG; sampling
    leaves the global RNG where it was (a notebook's other draws do not shift)."""
    g = Guidance(make_clip_loss(tiny_clip), scale=1000.0)

    def run(global_seed: int, seed: int = 0) -> torch.Tensor:
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        generator = torch.Generator().manual_seed(seed)
        x = sample(tiny_unet, SCHEDULERS[scheduler](), noise, 4, g, generator=generator)
        assert torch.equal(torch.get_rng_state(), state)
        return x

    first = run(global_seed=1)
    torch.testing.assert_close(run(global_seed=2), first, rtol=0, atol=0)
    assert (run(global_seed=1, seed=5) - first).abs().max() > 1e-3  # another seed, other cuts
    torch.manual_seed(1)
    sample(tiny_unet, SCHEDULERS["ddim"](), noise, 4, g)  # no generator: the global RNG draws
    assert not torch.equal(torch.get_rng_state(), torch.manual_seed(1).get_state())


def test_clip_cuts_batched_in_one_forward_in_unit_range(tiny_clip):
    loss = make_clip_loss(tiny_clip, n_cuts=4)
    seen = []
    handle = tiny_clip.visual.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x0 = torch.full((3, 3, 32, 32), -1.0, requires_grad=True)  # black in model space
    torch.manual_seed(0)
    value = loss(x0)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == (12, 3, 32, 32)
    mean = torch.tensor(clip_module.OPENAI_MEAN)[:, None, None]
    std = torch.tensor(clip_module.OPENAI_STD)[:, None, None]
    # [-1, 1] mapped to [0, 1] before normalising: black is (0 - mean) / std, not (-1 - mean) / std
    torch.testing.assert_close(seen[0][:, :, 16, 16], ((0 - mean) / std)[:, 0, 0].expand(12, 3))
    torch.autograd.grad(value, x0)  # differentiable
    torch.manual_seed(0)
    chunked = make_clip_loss(tiny_clip, n_cuts=4, cut_batches=2)(x0)
    torch.testing.assert_close(chunked, value)


def test_clip_loss_weights_several_prompts(tiny_clip):
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    losses = []
    for prompt, weights in ((["a", "b"], [1.0, 3.0]), ("a", None), ("b", None)):
        torch.manual_seed(0)
        kwargs = {"weights": weights} if weights else {}
        losses.append(ClipLoss(prompt, TINY_CLIP, n_cuts=2, model=tiny_clip, **kwargs)(x0))
    torch.testing.assert_close(losses[0], 0.25 * losses[1] + 0.75 * losses[2])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Guidance(ColorLoss(), 1.0, schedule="cosine"), "schedule='cosine'.*alpha_bar"),
        (lambda: Guidance(ColorLoss(), 1.0, apply_to="score"), "apply_to='score'.*x, eps"),
        (lambda: Guidance(ColorLoss(), float("nan")), "scale=nan"),
        (lambda: Guidance("color", 1.0), "not callable"),
        (lambda: Guidance(ColorLoss(), 1.0, grad_clip_rms=0), "grad_clip_rms=0"),
        (lambda: ColorLoss((0.8, 0.4, 1.6)), r"target_rgb=\(0.8, 0.4, 1.6\).*\[0, 1\]"),
        (lambda: ColorLoss((0.8, 0.4)), "expected 3 values"),
        (lambda: Guidance(ColorLoss(), 1.0, through_unet="no"), "through_unet='no': expected tr"),
        (lambda: Guidance(ColorLoss(), 1.0, clip_x0="false"), "clip_x0='false': expected true"),
    ],
)
def test_bad_guidance_settings(make, match):
    with pytest.raises(GuidanceError, match=match) as info:
        make()
    assert isinstance(info.value, DifftuneError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt": ""}, "prompt='': expected non-empty"),
        ({"prompt": []}, "prompt=.*non-empty"),
        ({"prompt": None}, "prompt=None: expected non-empty"),
        ({"n_cuts": 0}, "n_cuts=0: expected an integer >= 1"),
        ({"cut_batches": 5}, "cut_batches=5"),
        ({"weights": [1.0, 2.0]}, "weights="),
    ],
)
def test_bad_clip_settings(tiny_clip, kwargs, match):
    kwargs = {"prompt": "a rose", "model_name": TINY_CLIP, "model": tiny_clip, **kwargs}
    with pytest.raises(GuidanceError, match=match):
        ClipLoss(**kwargs)


def test_clip_weights_offline_say_how_to_pass_a_file(monkeypatch):
    monkeypatch.setattr(clip_module, "_hub_reachable", lambda: False)
    monkeypatch.setattr(clip_module, "_cached_weights", lambda cfg: None)
    with pytest.raises(GuidanceError, match=r"pass guidance.pretrained=/path/to/open_clip_pytorch"):
        ClipLoss("a rose", model_name="ViT-B-32", pretrained="openai")
    with pytest.raises(GuidanceError, match="neither an open_clip tag"):
        ClipLoss("a rose", model_name="ViT-B-32", pretrained="/no/such/weights.bin")
    # KID's CLIP features: the key that sets their weights, not guidance's
    with pytest.raises(GuidanceError) as err:
        ClipFeatures("ViT-B-32", "openai")
    assert "pass callbacks.kid.pretrained=/path/to/open_clip_pytorch_model.bin" in str(err.value)
    assert "guidance" not in str(err.value) and "ClipLoss" not in str(err.value)


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (lambda: ClipLoss("a rose", model_name="ViT-B-23"),
         "guidance.model_name=ViT-B-23: not an open_clip model; did you mean ViT-B-32"),
        (lambda: ClipFeatures("ViT-B-23", None),
         "callbacks.kid.model_name=ViT-B-23: not an open_clip model; did you mean ViT-B-32"),
    ],
)  # fmt: skip
def test_an_unknown_clip_model_names_its_own_key_and_the_nearest(load, message):
    with pytest.raises(GuidanceError) as err:
        load()
    assert str(err.value).startswith(message) and len(str(err.value)) < 200


def test_clip_local_weights_file_and_random_weights_warning(tiny_clip, tmp_path):
    path = tmp_path / "weights.bin"
    torch.save(tiny_clip.state_dict(), path)
    loaded = ClipLoss("a rose", model_name=TINY_CLIP, pretrained=str(path))
    torch.testing.assert_close(loaded.model.visual.conv1.weight, tiny_clip.visual.conv1.weight)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        ClipLoss("a rose", model_name=TINY_CLIP, pretrained=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_clip_loss(tiny_clip)  # a built model: no warning


def built(guide: Guidance, key: str):
    """The value that config key `key` became on the built Guidance or its loss."""
    if key == "prompt":
        return guide.loss.prompts[0]
    value = getattr(guide if hasattr(guide, key) else guide.loss, key)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("option", GUIDANCE_OPTIONS)
def test_every_guidance_option_instantiates_with_every_key(option, tiny_clip, tmp_path):
    tiny = [f"guidance.model_name={TINY_CLIP}", "guidance.pretrained=null"]  # no weights offline
    cfg = compose_sample(f"guidance={option}", *(tiny if option == "clip" else []),
                         output_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "guidance.pretrained=null: open_clip .* RANDOM weights")
        guide = hydra.utils.instantiate(cfg.guidance)
    if option == "none":
        assert cfg.guidance is None and guide is None
        return
    keys = {k: v for k, v in OmegaConf.to_container(cfg.guidance).items() if k != "_target_"}
    assert isinstance(guide, Guidance) and {k: built(guide, k) for k in keys} == keys


def test_the_short_command_line_keys_set_the_guidance(tmp_path):
    cfg = compose_sample(
        "guidance=color", "guidance.scale=60", "guidance.target_rgb=[0.1,0.9,0.5]",
        "guidance.schedule=sqrt_alpha_bar", "guidance.through_unet=true", output_dir=tmp_path,
    )  # fmt: skip
    guide = hydra.utils.instantiate(cfg.guidance)
    assert isinstance(guide, Guidance) and isinstance(guide.loss, ColorLoss)
    assert guide.scale == 60 and guide.loss.target_rgb == (0.1, 0.9, 0.5)
    assert guide.schedule == "sqrt_alpha_bar" and guide.through_unet
    clip = compose_sample(
        "guidance=clip", 'guidance.prompt="Red Rose, red flower painting"', "guidance.n_cuts=6",
        "guidance.cut_batches=2", "guidance.apply_to=eps", "guidance.grad_clip_rms=0.5",
        "guidance.clip_x0=false", output_dir=tmp_path,
    ).guidance  # fmt: skip
    assert clip.prompt == "Red Rose, red flower painting" and clip.n_cuts == 6
    assert clip.cut_batches == 2 and clip.apply_to == "eps"
    assert clip.grad_clip_rms == 0.5 and clip.clip_x0 is False
