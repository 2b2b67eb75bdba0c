"""Guidance inside `sample()`: it lowers its loss, weights by timestep, any scheduler and type."""

import pytest
import torch
from diffusers import DDIMScheduler

from difftune.core.prediction import eps_shift_to_output, predict_x0, to_epsilon
from difftune.core.sampling import sample
from difftune.guidance import SCHEDULES, ColorLoss, Guidance
from difftune.hub.pipelines import load_noise_scheduler, load_unet
from helpers.models import SCHEDULERS


@pytest.mark.parametrize("apply_to", ["x", "eps"])
@pytest.mark.parametrize("through_unet", [False, True])
def test_color_guidance_lowers_color_distance(tiny_unet, noise, through_unet, apply_to):
    loss = ColorLoss((0.8, 0.4, 0.6))
    runs = {}
    for scale in (0.0, 5.0, 20.0):
        g = Guidance(loss, scale, through_unet=through_unet, apply_to=apply_to)
        runs[scale] = loss(sample(tiny_unet, SCHEDULERS["ddim"](), noise, 10, guidance=g)).item()
    assert runs[20.0] < 0.8 * runs[5.0] < 0.8 * runs[0.0]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("apply_to", ["x", "eps"])
def test_every_schedule_on_every_scheduler_guides(tiny_unet, noise, name, apply_to):
    loss = ColorLoss()

    def run(guidance=None):  # DDPM's per-step noise from the same seed in every run
        generator = torch.Generator().manual_seed(0)
        return sample(tiny_unet, SCHEDULERS[name](), noise, 4, guidance, generator=generator)

    unguided = loss(run())
    outs = []
    for schedule in SCHEDULES:
        g = Guidance(loss, 5.0, schedule=schedule, apply_to=apply_to)
        outs.append(run(g))
        assert torch.isfinite(outs[-1]).all() and g.nonfinite_steps == 0
        assert loss(outs[-1]) < unguided, schedule  # toward the colour, whatever the weight
    for i, a in enumerate(outs):  # each schedule weights the steps its own way
        assert all((a - b).abs().max() > 1e-4 for b in outs[i + 1 :])


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("through_unet", [False, True])
def test_other_prediction_types_are_guided(tiny_unet, noise, prediction_type, through_unet):
    def make():
        return DDIMScheduler(clip_sample=False, prediction_type=prediction_type)

    unguided = sample(tiny_unet, make(), noise, 4)
    for apply_to in ("x", "eps"):
        g = Guidance(ColorLoss(), 5.0, through_unet=through_unet, apply_to=apply_to)
        out = sample(tiny_unet, make(), noise, 4, guidance=g)
        assert torch.isfinite(out).all()
        assert ColorLoss()(out) < ColorLoss()(unguided), apply_to  # the right sign


@pytest.mark.parametrize("apply_to", ["x", "eps"])
@pytest.mark.parametrize("through_unet", [False, True])
def test_dpm_solver_scale_zero_equals_unguided(tiny_unet, noise, apply_to, through_unet):
    """Multistep state untouched by guidance: proves the single scheduler.step per timestep."""
    unguided = sample(tiny_unet, SCHEDULERS["dpm"](), noise, 6)
    g = Guidance(ColorLoss(), 0.0, through_unet=through_unet, apply_to=apply_to)
    guided = sample(tiny_unet, SCHEDULERS["dpm"](), noise, 6, guidance=g)
    torch.testing.assert_close(guided, unguided, atol=0, rtol=0)
    g.scale = 5.0
    assert not torch.equal(sample(tiny_unet, SCHEDULERS["dpm"](), noise, 6, guidance=g), unguided)


def test_schedule_indexed_by_timestep(tiny_unet, noise, monkeypatch):
    scheduler = SCHEDULERS["ddim"]()
    seen = []
    g = Guidance(ColorLoss(), 1.0, schedule="sqrt_alpha_bar")
    weight = g.weight
    monkeypatch.setattr(g, "weight", lambda a: seen.append(a) or weight(a))
    sample(tiny_unet, scheduler, noise, 5, guidance=g)
    expected = scheduler.alphas_cumprod[scheduler.timesteps]
    torch.testing.assert_close(torch.stack(seen), expected)
    assert not torch.allclose(expected, scheduler.alphas_cumprod[:5])  # the article's [i] bug
    a = scheduler.alphas_cumprod[801]
    values = {name: fn(a) for name, fn in SCHEDULES.items()}
    torch.testing.assert_close(values["none"], torch.tensor(1.0))
    torch.testing.assert_close(values["alpha_bar"], a)
    torch.testing.assert_close(values["sqrt_alpha_bar"], a.sqrt())
    torch.testing.assert_close(values["sqrt_one_minus_alpha_bar"], (1 - a).sqrt())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_type_conversions(prediction_type):
    x0, eps, a = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor(0.3)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    out = {"epsilon": eps, "v_prediction": v, "sample": x0}[prediction_type]
    torch.testing.assert_close(predict_x0(out, x_t, a, prediction_type), x0)
    torch.testing.assert_close(to_epsilon(out, x_t, a, prediction_type), eps)
    delta = torch.randn_like(eps)
    shifted = out + eps_shift_to_output(delta, a, prediction_type)
    torch.testing.assert_close(to_epsilon(shifted, x_t, a, prediction_type), eps + delta)


def test_terms_are_summed(tiny_unet, noise):
    one = Guidance(ColorLoss(), 8.0)
    two = [Guidance(ColorLoss(), 3.0), Guidance(ColorLoss(), 5.0)]
    a = sample(tiny_unet, SCHEDULERS["ddim"](), noise, 5, guidance=one)
    b = sample(tiny_unet, SCHEDULERS["ddim"](), noise, 5, guidance=two)
    torch.testing.assert_close(a, b)


def test_grad_clip_rms_bounds_the_update():
    g = Guidance(ColorLoss(), 1e4, grad_clip_rms=0.01)
    x_t = torch.randn(3, 3, 8, 8)
    grad = g.gradient(x_t, torch.randn_like(x_t), torch.tensor(0.5), "epsilon")
    rms = grad.pow(2).flatten(1).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.full((3,), 0.01))


def test_nonfinite_gradient_steps_are_taken_unguided(tiny_unet, noise):
    calls = []

    def sometimes_nan(x0):
        calls.append(1)
        loss = ColorLoss()(x0)
        return loss * float("nan") if len(calls) % 2 else loss

    g = Guidance(sometimes_nan, 5.0)
    with pytest.warns(RuntimeWarning, match="non-finite guidance gradient at 3 step"):
        out = sample(tiny_unet, SCHEDULERS["ddim"](), noise, 6, guidance=g)
    assert g.nonfinite_steps == 3 and torch.isfinite(out).all()
    always = Guidance(lambda x0: x0.sum() * float("nan"), 5.0, through_unet=True)
    with pytest.warns(RuntimeWarning):
        out = sample(tiny_unet, SCHEDULERS["dpm"](), noise, 6, guidance=always)
    assert always.nonfinite_steps == 6
    torch.testing.assert_close(out, sample(tiny_unet, SCHEDULERS["dpm"](), noise, 6))


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])],
)  # fmt: skip
def test_colour_guidance_pulls_the_embedded_base_toward_the_colour(device):
    unet = load_unet("difftune/tiny_base").eval().to(device)
    scheduler = DDIMScheduler.from_config(load_noise_scheduler("difftune/tiny_base").config)
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    loss = ColorLoss(target_rgb=(0.9, 0.6, 0.2))

    def colour_error(guidance: Guidance | None) -> float:
        return float(loss(sample(unet, scheduler, noise, 20, guidance=guidance).clamp(-1, 1)))

    unguided = colour_error(None)
    guided = colour_error(Guidance(loss, scale=40.0))
    print(f"{device}: colour error unguided {unguided:.3f}, guided {guided:.3f}")
    assert guided < 0.5 * unguided


def test_per_image_guidance_pulls_each_image_as_if_sampled_alone(tiny_unet, noise):
    """per_image=True: an image of a batch of 2 is the image sampled alone; the article's mean
    (the default): a batch of 2 at scale s is each image alone at s/2."""

    def run(x: torch.Tensor, scale: float, per_image: bool) -> torch.Tensor:
        g = Guidance(ColorLoss((0.9, 0.1, 0.1)), scale=scale, per_image=per_image)
        return sample(tiny_unet, SCHEDULERS["ddim"](), x, 4, guidance=g)

    per_image = run(noise, 40.0, per_image=True)
    alone = run(noise[1:], 40.0, per_image=True)  # batched convolutions: float32 rounding
    torch.testing.assert_close(per_image[1:], alone, rtol=0, atol=1e-4)
    mean = run(noise, 40.0, per_image=False)
    torch.testing.assert_close(mean[1:], run(noise[1:], 20.0, per_image=False), rtol=0, atol=1e-4)
    assert (per_image - mean).abs().max() > 1e-2  # the two differ
