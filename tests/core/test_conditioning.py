"""Class conditioning: a pretrained UNet made conditional starts exactly where it was; CFG in
`sample()` equals a two-call reference loop, cfg 1 the conditional and cfg 0 the null model."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from difftune.core.conditioning import (
    add_class_embedding,
    class_label_id,
    class_names_of,
    drop_labels,
    null_label,
)
from difftune.core.module import DiffusionFineTuner
from difftune.errors import DifftuneError
from difftune.guidance import ColorLoss, Guidance
from difftune.sampling import sample
from helpers.models import conditional_tiny_base, make_conditional_unet, make_tiny_unet
from helpers.training import sgd

NAMES = ("photo", "vintage", "cyanotype")


def cfg_reference_loop(unet, scheduler, x_t, labels, w, steps):
    """Ho & Salimans 2022 written out: two UNet calls per step, then one scheduler step."""
    scheduler.set_timesteps(steps)
    null = torch.full_like(labels, unet.config.num_class_embeds - 1)
    for t in scheduler.timesteps:
        with torch.no_grad():
            model_input = scheduler.scale_model_input(x_t, t)
            eps_c = unet(model_input, t, class_labels=labels).sample
            eps_u = unet(model_input, t, class_labels=null).sample
        x_t = scheduler.step(eps_u + w * (eps_c - eps_u), t, x_t).prev_sample
    return x_t


def test_a_new_class_embedding_starts_at_the_pretrained_output_for_every_label(tiny_unet, noise):
    conditional = add_class_embedding(tiny_unet, NAMES).eval()
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = tiny_unet.eval()(noise, t).sample
        for label in range(len(NAMES) + 1):  # the null label too
            labels = torch.full((2,), label)
            assert torch.equal(conditional(noise, t, class_labels=labels).sample, expected)
    assert conditional.config.num_class_embeds == len(NAMES) + 1
    assert null_label(conditional) == len(NAMES)


def test_the_classes_travel_with_a_plain_diffusers_save_and_load(tmp_path):
    unet = make_conditional_unet(NAMES)
    unet.save_pretrained(tmp_path / "unet")
    loaded = UNet2DModel.from_pretrained(tmp_path / "unet")
    assert class_names_of(loaded) == list(NAMES)
    torch.testing.assert_close(loaded.class_embedding.weight, unet.class_embedding.weight)
    assert class_names_of(make_tiny_unet()) is None


def test_a_diffusers_conditional_model_without_names_gets_its_ids_as_names():
    config = {"num_class_embeds": 4, "class_embed_type": None}
    assert class_names_of(config) == ["0", "1", "2"]


SAMPLERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm": DPMSolverMultistepScheduler}


@pytest.fixture(scope="module")
def base():
    """The embedded tiny base (trained, v-prediction, clip_sample=True as it ships), with random
    class rows; untrained tiny UNets blow up to |x| ~ 700, where float32 rounding is ~1e-4."""
    return conditional_tiny_base(NAMES)


@pytest.fixture
def noise32() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["ddim", "dpm"])  # deterministic samplers: the reference is too
def test_cfg_equals_the_two_call_reference_loop(name, base, noise32):
    unet, config = base
    labels = torch.tensor([0, 2])
    make = lambda: SAMPLERS[name].from_config(config)  # noqa: E731
    ours = sample(unet, make(), noise32, 8, class_labels=labels, cfg_scale=3.0)
    reference = cfg_reference_loop(unet, make(), noise32.clone(), labels, 3.0, 8)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)  # one call or two: ~1e-6
    conditional = sample(unet, make(), noise32, 8, class_labels=labels)
    assert (ours - conditional).abs().max() > 0.1  # the guidance did something


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cfg_scale_1_is_the_conditional_model_and_0_the_null_label(name, base, noise32):
    unet, config = base
    labels = torch.tensor([1, 1])
    noise = noise32

    def draw(**kwargs):
        generator = torch.Generator().manual_seed(3)  # DDPM's per-step noise, the same each time
        return sample(unet, SAMPLERS[name].from_config(config), noise, 6, generator=generator,
                      **kwargs)  # fmt: skip

    conditional = draw(class_labels=labels)
    torch.testing.assert_close(draw(class_labels=labels, cfg_scale=1.0), conditional,
                               atol=1e-5, rtol=0)  # fmt: skip
    unconditional = draw()  # no labels on a conditional UNet: the null label
    torch.testing.assert_close(draw(class_labels=labels, cfg_scale=0.0), unconditional,
                               atol=1e-5, rtol=0)  # fmt: skip
    assert (conditional - unconditional).abs().max() > 0.1


def test_cfg_makes_one_batched_unet_call_and_one_scheduler_step_per_timestep(noise):
    unet = make_conditional_unet(NAMES)
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    calls, steps = [], []
    forward, step = unet.forward, scheduler.step
    unet.forward = lambda x, t, class_labels=None, **k: (
        calls.append(class_labels.tolist()) or (forward(x, t, class_labels=class_labels, **k))
    )
    scheduler.step = lambda *a, **k: steps.append(1) or step(*a, **k)
    sample(unet, scheduler, noise, 5, class_labels=torch.tensor([0, 2]), cfg_scale=2.0)
    assert calls == [[0, 2, 3, 3]] * 5  # conditional and null labels in one call
    assert len(steps) == 5


def test_cfg_and_colour_guidance_together_lower_the_colour_loss(noise):
    unet = make_conditional_unet(NAMES)
    loss = ColorLoss((0.8, 0.4, 0.6))
    kwargs = dict(class_labels=torch.tensor([0, 1]), cfg_scale=3.0)
    scheduler = lambda: DDIMScheduler(num_train_timesteps=1000, clip_sample=True)  # noqa: E731
    cfg_only = sample(unet, scheduler(), noise, 20, **kwargs)
    for through_unet in (False, True):
        guided = sample(unet, scheduler(), noise, 20, guidance=Guidance(loss, 40, through_unet),
                        **kwargs)  # fmt: skip
        assert float(loss(guided.clamp(-1, 1))) < float(loss(cfg_only.clamp(-1, 1))) - 0.02


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cfg_scale": float("nan")}, "cfg_scale=nan: expected a finite number"),
        ({"cfg_scale": "3"}, "cfg_scale=3: expected a finite number"),
        ({"cfg_scale": 3.0}, "cfg_scale=3.0: needs class_labels"),
        ({"class_labels": torch.tensor([0, 1, 2])}, "class_labels: (3,) labels for 2 images"),
        ({"class_labels": torch.tensor([0, 7])}, "class_labels: 7 is not a class id of this UNet"),
        ({"class_labels": -1}, "class_labels: -1 is not a class id"),  # was torch's IndexError
    ],
)
def test_bad_cfg_input_is_one_line(noise, kwargs, message):
    unet = make_conditional_unet(NAMES)
    with pytest.raises(DifftuneError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)")):
        sample(unet, DDIMScheduler(num_train_timesteps=1000), noise, 2, **kwargs)


def test_labels_for_an_unconditional_unet_are_refused(tiny_unet, noise):
    with pytest.raises(DifftuneError, match="this UNet has no class embedding"):
        sample(tiny_unet, DDIMScheduler(num_train_timesteps=1000), noise, 2, class_labels=0)


def test_class_labels_by_name_or_id():
    assert class_label_id("vintage", NAMES) == 1
    assert class_label_id(2, NAMES) == 2
    assert class_label_id("2", NAMES) == 2
    for bad in ("sepia", 3, -1, True):
        with pytest.raises(DifftuneError) as err:
            class_label_id(bad, NAMES)
        assert str(err.value) == (
            f"class_label={bad!r} is not a class of this model; "
            "valid: photo (0), vintage (1), cyanotype (2)"
        )


def test_label_dropout_uses_the_null_label_at_the_rate_asked():
    labels = torch.zeros(20_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, 3, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 3}
    assert abs(float((dropped == 3).float().mean()) - 0.1) < 0.01
    assert torch.equal(drop_labels(labels, 0.0, 3, torch.Generator()), labels)


def conditional_module(**kwargs) -> DiffusionFineTuner:
    return DiffusionFineTuner(
        make_tiny_unet(), DDPMScheduler(num_train_timesteps=1000), optimizer=sgd(0.1), **kwargs
    )


def test_the_module_trains_the_class_embedding_and_drops_labels():
    module = conditional_module(conditioning="class", class_names=NAMES, p_uncond=0.5)
    assert module.class_names == list(NAMES) and list(module.hparams.class_names) == list(NAMES)
    batch = {
        "images": torch.rand(8, 3, 16, 16) * 2 - 1,
        "labels": torch.tensor([0, 1, 2] * 2 + [0, 1]),
    }
    seen = []
    forward = module.unet.forward
    module.unet.forward = lambda x, t, c=None, **k: seen.append(c) or forward(x, t, c, **k)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert module.unet.class_embedding.weight.grad.abs().sum() > 0
    labels = seen[0]
    kept = labels != 3
    assert 0 < int(kept.sum()) < 8  # p_uncond=0.5: some dropped, some kept (seeded)
    assert torch.equal(labels[kept], batch["labels"][kept])


@pytest.mark.parametrize("embedding_lr", [None, 1e-2])
def test_the_class_embedding_gets_its_own_lr(embedding_lr):
    module = conditional_module(conditioning="class", class_names=NAMES,
                                class_embedding_lr=embedding_lr)  # fmt: skip
    optimizer = module.configure_optimizers()
    embedding = set(module.unet.class_embedding.parameters())
    groups = [(g["lr"], set(g["params"])) for g in optimizer.param_groups]
    if embedding_lr is None:  # one group: everything at optimizer.lr
        assert groups == [(0.1, set(module.unet.parameters()))]
    else:
        assert groups == [(0.1, set(module.unet.parameters()) - embedding), (1e-2, embedding)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conditioning": "text"}, "model.conditioning='text' is not one of class, null"),
        (
            {"conditioning": "class"},
            "model.conditioning=class needs labelled data: set data.label_column",
        ),  # fmt: skip
        (
            {"conditioning": "class", "class_names": NAMES, "p_uncond": 1.0},
            "model.p_uncond=1.0 must be in [0, 1)",
        ),  # fmt: skip
    ],
)
def test_bad_conditioning_keys_are_one_line(kwargs, message):
    with pytest.raises(DifftuneError) as err:
        conditional_module(**kwargs)
    assert str(err.value).startswith(message)


def test_a_conditional_pretrained_unet_needs_conditioning_and_its_own_classes():
    unet = make_conditional_unet(NAMES)
    with pytest.raises(DifftuneError, match=r"model.conditioning=null: the pretrained UNet is "
                                            r"class-conditional \(classes \['photo'"):  # fmt: skip
        DiffusionFineTuner(unet, DDPMScheduler(), optimizer=sgd())
    with pytest.raises(DifftuneError, match="conditional on classes .* the data's are"):
        DiffusionFineTuner(unet, DDPMScheduler(), optimizer=sgd(), conditioning="class",
                           class_names=("a", "b"))  # fmt: skip
    same = DiffusionFineTuner(unet, DDPMScheduler(), optimizer=sgd(), conditioning="class",
                              class_names=NAMES)  # fmt: skip
    assert same.unet is unet  # kept, with its trained embedding


def test_a_continuous_class_embedding_is_refused_in_one_line():
    with pytest.raises(DifftuneError, match="^class_embed_type='timestep': only class ids"):
        class_names_of({"class_embed_type": "timestep", "num_class_embeds": None})
