"""The sampling loop: equal to the article's loops, one scheduler step per timestep, no graph."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from difftune.errors import DifftuneError
from difftune.guidance import ColorLoss, Guidance
from difftune.pictures.images import save_grid, to_pil_list, to_unit
from difftune.sampling import sample
from helpers.article_loops import article_color_loop, article_ddim_loop
from helpers.models import SCHEDULERS, make_tiny_unet

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def article_scheduler(clip_sample: bool, prediction_type: str = "epsilon") -> DDIMScheduler:
    """The article's DDIM from google/ddpm-celebahq-256's config (clip_sample=True there)."""
    return DDIMScheduler(
        num_train_timesteps=1000, clip_sample=clip_sample, prediction_type=prediction_type
    )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("clip_sample", [True, False])
def test_unguided_equals_article_ddim_loop(tiny_unet, noise, clip_sample, prediction_type):
    make = lambda: article_scheduler(clip_sample, prediction_type)  # noqa: E731
    ours = sample(tiny_unet, make(), noise, num_inference_steps=20)
    article = article_ddim_loop(tiny_unet, make(), noise.clone(), 20)
    torch.testing.assert_close(ours, article, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("clip_sample", [True, False])
def test_color_guided_equals_article_color_loop(tiny_unet, noise, clip_sample, prediction_type):
    """The article takes x̂0 from scheduler.step(...).pred_original_sample: clipped with its
    scheduler's clip_sample=True, so its gradient is zero where x̂0 leaves [-1, 1]."""
    make = lambda: article_scheduler(clip_sample, prediction_type)  # noqa: E731
    g = Guidance(ColorLoss((0.8, 0.4, 0.6)), scale=40, through_unet=True)
    ours = sample(tiny_unet, make(), noise, num_inference_steps=20, guidance=g)
    article = article_color_loop(tiny_unet, make(), noise.clone(), 40, 20)
    unguided = sample(tiny_unet, make(), noise, num_inference_steps=20)
    assert (article - unguided).abs().max() > 1e-2  # the guidance did something
    torch.testing.assert_close(ours, article, atol=1e-4, rtol=0)


def test_clipped_x0_matters_and_can_be_turned_off(tiny_unet, noise):
    """With clip_sample=True the clip changes the result; clip_x0=False is the unclipped x̂0."""
    kwargs = dict(scale=40, through_unet=True)
    clipped = Guidance(ColorLoss(), **kwargs)
    raw = Guidance(ColorLoss(), clip_x0=False, **kwargs)
    with_clip = sample(tiny_unet, article_scheduler(True), noise, 20, guidance=clipped)
    without = sample(tiny_unet, article_scheduler(True), noise, 20, guidance=raw)
    assert (with_clip - without).abs().max() > 1e-2
    # the unclipped x̂0 under a clipping scheduler equals the clipped one under a non-clipping
    # scheduler only where nothing saturates; here it must at least differ from the article
    article = article_color_loop(tiny_unet, article_scheduler(True), noise.clone(), 40, 20)
    assert (without - article).abs().max() > 1e-2


def test_dynamic_thresholding_is_followed(tiny_unet, noise):
    """thresholding=True: the loss sees the scheduler's own thresholded pred_original_sample."""
    seen, steps = [], []

    def loss(x0):
        seen.append(x0.detach())
        return ColorLoss()(x0)

    def make():
        return DDIMScheduler(num_train_timesteps=1000, thresholding=True, sample_max_value=1.5)

    guidance = Guidance(loss, 10.0, apply_to="eps")  # x_t as the loss saw it reaches the callback
    sample(tiny_unet, make(), noise * 3, 3, guidance=guidance, callback=steps.append)
    assert len(seen) == len(steps) == 3
    scheduler, plain = make(), DDIMScheduler(num_train_timesteps=1000)  # plain: clamps to ±1
    scheduler.set_timesteps(3)
    plain.set_timesteps(3)
    for x0, step, t in zip(seen, steps, scheduler.timesteps, strict=True):
        with torch.no_grad():
            eps = tiny_unet(step["x_t"], t).sample
        expected = scheduler.step(eps, t, step["x_t"]).pred_original_sample
        torch.testing.assert_close(x0, expected)
        clamped = plain.step(eps, t, step["x_t"]).pred_original_sample
        assert (x0 - clamped).abs().max() > 1e-3  # thresholding, not a plain clamp


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("through_unet", [None, False, True])
def test_one_scheduler_step_per_timestep(tiny_unet, noise, name, through_unet):
    scheduler = SCHEDULERS[name]()
    calls = []
    step = scheduler.step

    def counting_step(*args, **kwargs):
        calls.append(kwargs.get("generator"))
        return step(*args, **kwargs)

    scheduler.step = counting_step
    g = None if through_unet is None else Guidance(ColorLoss(), 10, through_unet=through_unet)
    gen = torch.Generator().manual_seed(1)
    sample(tiny_unet, scheduler, noise, num_inference_steps=7, guidance=g, generator=gen)
    assert len(calls) == len(scheduler.timesteps) == 7
    assert all(c is gen for c in calls)


@pytest.mark.parametrize("guidance", [None, Guidance(ColorLoss(), 10.0)])
def test_no_graph_through_the_unet_unless_asked(tiny_unet, noise, guidance):
    grad_enabled = []
    handle = tiny_unet.register_forward_hook(
        lambda *_: grad_enabled.append(torch.is_grad_enabled())
    )
    out = sample(tiny_unet, SCHEDULERS["ddim"](), noise, 5, guidance=guidance)
    handle.remove()
    assert grad_enabled == [False] * 5
    assert not out.requires_grad and out.grad_fn is None


def test_through_unet_output_is_detached(tiny_unet, noise):
    g = Guidance(ColorLoss(), 10.0, through_unet=True)
    out = sample(tiny_unet, SCHEDULERS["dpm"](), noise, 4, guidance=g)
    assert not out.requires_grad


@pytest.mark.parametrize("clip_sample", [True, False])
def test_callback_sees_every_step(tiny_unet, noise, clip_sample):
    seen = []
    sample(tiny_unet, article_scheduler(clip_sample), noise, 6, callback=seen.append)
    assert [s["i"] for s in seen] == list(range(6))
    timesteps = [int(s["t"]) for s in seen]
    assert timesteps == sorted(timesteps, reverse=True)
    # each x̂0 is the DDIM pred_original_sample of its step (clipped when the scheduler clips)
    scheduler = article_scheduler(clip_sample)
    scheduler.set_timesteps(6)
    largest = 0.0
    for s, t in zip(seen, scheduler.timesteps, strict=True):
        assert s["x_t"].shape == s["x0"].shape == noise.shape
        assert not s["x0"].requires_grad
        with torch.no_grad():
            eps = tiny_unet(s["x_t"], t).sample
        expected = scheduler.step(eps, t, s["x_t"]).pred_original_sample
        torch.testing.assert_close(s["x0"], expected)
        largest = max(largest, float(s["x0"].abs().max()))
    assert largest == 1.0 if clip_sample else largest > 1.0  # the clip really acted


def test_ddpm_reproducible_with_generator(tiny_unet, noise):
    scheduler = SCHEDULERS["ddpm"]()
    a = sample(tiny_unet, scheduler, noise, 5, generator=torch.Generator().manual_seed(3))
    b = sample(tiny_unet, scheduler, noise, 5, generator=torch.Generator().manual_seed(3))
    c = sample(tiny_unet, scheduler, noise, 5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)


def test_noise_scaled_by_init_noise_sigma(tiny_unet, noise):
    """Euler works in sigma space: x_T = σ_max·noise, and scale_model_input divides it back."""
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000)
    ours = sample(tiny_unet, scheduler, noise, 5)
    scheduler.set_timesteps(5)
    x = noise * scheduler.init_noise_sigma
    assert scheduler.init_noise_sigma > 1
    for t in scheduler.timesteps:
        with torch.no_grad():
            eps = tiny_unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(eps, t, x).prev_sample
    torch.testing.assert_close(ours, x)


def test_float64_sampling_keeps_dtype(noise):
    unet = make_tiny_unet().double()
    g = Guidance(ColorLoss(), 10.0, schedule="sqrt_alpha_bar")
    out = sample(unet, SCHEDULERS["dpm"](), noise.double(), 3, guidance=g)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_image_helpers(tmp_path):
    x = torch.linspace(-2, 2, 5 * 3 * 4 * 4).reshape(5, 3, 4, 4)
    unit = to_unit(x)
    assert unit.min() == 0 and unit.max() == 1
    path = save_grid(x, tmp_path / "deep" / "grid.png")
    assert path.is_file()
    images = to_pil_list(x)
    assert len(images) == 5 and images[0].size == (4, 4) and images[0].mode == "RGB"


def test_bad_sample_arguments(tiny_unet, noise):
    with pytest.raises(DifftuneError, match="num_inference_steps=0: expected >= 1"):
        sample(tiny_unet, SCHEDULERS["ddim"](), noise, 0)
    with pytest.raises(DifftuneError, match="guidance=ColorLoss.*expected a Guidance"):
        sample(tiny_unet, SCHEDULERS["ddim"](), noise, 2, guidance=ColorLoss())


@pytest.mark.parametrize(
    ("noise", "message"),
    [
        (torch.randn(3, 16, 16), r"^sample noise=\(3, 16, 16\): expected a float tensor B×C×H×W$"),
        (torch.randn(1, 3, 15, 16), r"noise of shape \(1, 3, 15, 16\): the UNet takes 3 channels "
         r"and sides that are multiples of 2 \(e\.g\. 16\)$"),
        (torch.randn(1, 4, 16, 16), r"noise of shape \(1, 4, 16, 16\): the UNet takes 3 channels"),
        (torch.randn(1, 3, 16, 16).half(), r"^sample noise of dtype torch\.float16, the UNet's "
         r"weights torch\.float32: pass noise\.to\(torch\.float32\), or sample under "),
    ],
)  # fmt: skip
def test_noise_that_does_not_fit_the_unet_is_one_line_before_any_step(tiny_unet, noise, message):
    """Before: torch's own errors from deep inside the UNet ("Sizes of tensors must match",
    "Input type (c10::Half) and bias type (float) should be the same")."""
    with pytest.raises(DifftuneError, match=message):
        sample(tiny_unet, DDIMScheduler(), noise, num_inference_steps=2)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_most_steps_a_scheduler_takes_sample_to_the_end_and_one_more_is_one_line(name):
    """DDIM and DDPM take one step per training timestep; DPM-Solver takes that many too, and
    then repeats a timestep (`timestep_spacing="linspace"`) or, with the "leading" spacing of the
    embedded base, fails at its last step (IndexError, after all the others): one fewer."""
    config = {"num_train_timesteps": 50, "timestep_spacing": "leading"}
    scheduler = type(SCHEDULERS[name]()).from_config(config)
    unet = make_tiny_unet(sample_size=8)
    limit = 49 if name == "dpm" else 50
    x_0 = sample(unet, scheduler, torch.randn(1, 3, 8, 8), num_inference_steps=limit)
    assert torch.isfinite(x_0).all() and len(scheduler.timesteps) == limit
    with pytest.raises(DifftuneError) as err:
        sample(unet, scheduler, torch.randn(1, 3, 8, 8), num_inference_steps=limit + 1)
    assert str(err.value) == (
        f"num_inference_steps={limit + 1}: more than {type(scheduler).__name__} takes on the "
        f"pipeline's 50 training timesteps; valid: 1 to {limit}"
    )
    if name == "dpm":  # what the limit saves: diffusers takes 50 steps, and fails at the last
        scheduler.set_timesteps(50)
        x_t = torch.zeros(1, 3, 8, 8)
        with pytest.raises(IndexError):
            for t in scheduler.timesteps:
                x_t = scheduler.step(torch.zeros_like(x_t), t, x_t).prev_sample
