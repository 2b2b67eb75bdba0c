"""The training step: targets per prediction type, the loss, accumulation, EMA."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from difftune.callbacks import SkippedImages
from difftune.core.ema import EMA, ema_decay, ema_unet
from difftune.core.module import DiffusionFineTuner
from difftune.core.prediction import training_target
from difftune.errors import DifftuneError
from helpers.models import make_tiny_unet
from helpers.training import batches, make_module, sgd, trainer


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_matches_the_formula(prediction_type):
    module = make_module(prediction_type)
    x_0 = torch.rand(4, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(x_0)
    t = torch.tensor([0, 250, 500, 999])
    alpha_bar = module.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * noise
    expected_target = {
        "epsilon": noise,
        "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x_0,
        "sample": x_0,
    }[prediction_type]

    target = training_target(module.noise_scheduler, x_0, noise, t)
    torch.testing.assert_close(target, expected_target)
    with torch.no_grad():
        expected_loss = F.mse_loss(module.unet(x_t, t).sample, expected_target)
        loss = module.diffusion_loss(x_0, noise, t)
    torch.testing.assert_close(loss, expected_loss)


def test_unknown_prediction_type_is_a_clear_error():
    scheduler = DDPMScheduler()
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(
        DifftuneError, match="prediction_type='flow' is not one of epsilon, v_prediction, sample"
    ):
        DiffusionFineTuner(make_tiny_unet(), scheduler, optimizer=sgd())


def test_noise_and_timesteps_are_uniform_and_reproducible():
    module = make_module()
    x_0 = torch.zeros(4096, 3, 2, 2)
    noise, t = module.draw_noise_and_timesteps(x_0, module._generator(7))
    noise_again, t_again = module.draw_noise_and_timesteps(x_0, module._generator(7))
    assert torch.equal(noise, noise_again) and torch.equal(t, t_again)
    assert t.min() >= 0 and t.max() <= 999
    assert abs(t.float().mean().item() - 499.5) < 15  # U{0..999}: sd of the mean is 4.5
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02


class QueuedNoise(DiffusionFineTuner):
    """Draws preset (noise, t) pairs in order, so two runs can be given the same randomness."""

    def __init__(self, queue, **kwargs):
        super().__init__(**kwargs)
        self.queue = list(queue)

    def draw_noise_and_timesteps(self, x_0, generator):
        return self.queue.pop(0)


def test_accumulation_equals_one_large_batch():
    """Two accumulated batches of 4 take the same optimizer step as one batch of 8."""
    small = batches(2, 4)
    g = torch.Generator().manual_seed(1)
    draws = [
        (torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 1000, (4,), generator=g))
        for _ in small
    ]
    large = [{"images": torch.cat([b["images"] for b in small]), "skipped": []}]
    large_draws = [(torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws]))]

    def fit(data, queue, accumulate):
        module = QueuedNoise(
            queue, unet=make_tiny_unet(), noise_scheduler=DDPMScheduler(), optimizer=sgd(0.1)
        )
        collate = lambda items: items[0]  # noqa: E731  (batches are pre-built)
        trainer(accumulate_grad_batches=accumulate).fit(
            module, DataLoader(data, batch_size=1, collate_fn=collate)
        )
        return module.unet.state_dict()

    accumulated, one_batch = fit(small, draws, 2), fit(large, large_draws, 1)
    initial = make_tiny_unet().state_dict()
    assert any(not torch.equal(accumulated[k], initial[k]) for k in initial)  # it did train
    for key in initial:
        torch.testing.assert_close(accumulated[key], one_batch[key], rtol=1e-5, atol=1e-6)


def test_empty_batch_takes_no_step(tmp_path):
    module = make_module()
    before = {k: v.clone() for k, v in module.unet.state_dict().items()}
    empty = [{"images": torch.zeros(0, 3, 16, 16), "skipped": ["truncated"] * 4}]
    loader = DataLoader(empty, batch_size=1, collate_fn=lambda items: items[0])
    trainer(default_root_dir=tmp_path, callbacks=[SkippedImages()]).fit(module, loader)
    assert all(torch.equal(before[k], v) for k, v in module.unet.state_dict().items())
    assert (tmp_path / "skipped_images.txt").read_text().count("\ttruncated\t<bytes>\n") == 4


def test_ema_decay_warms_up_to_its_cap():
    assert ema_decay(0, 0.999) == 0.0
    assert ema_decay(1, 0.999, power=0.75) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(10**9, 0.999) == 0.999


class RecordWeights(Callback):
    def __init__(self):
        self.history = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history.append({k: v.clone() for k, v in pl_module.unet.state_dict().items()})


def test_ema_is_the_average_of_the_raw_weights(tmp_path):
    """After fit `ema_unet` holds θ_ema (what export saves); the module keeps the raw θ."""
    module = make_module(lr=0.5)
    record, ema = RecordWeights(), EMA(decay=0.5, warmup=False)
    fit_trainer = trainer(max_steps=3, callbacks=[record, ema])
    fit_trainer.fit(
        module, DataLoader(batches(3, 4), batch_size=1, collate_fn=lambda items: items[0])
    )
    raw = record.history
    for key in raw[0]:
        expected = 0.5 * (0.5 * raw[0][key] + 0.5 * raw[1][key]) + 0.5 * raw[2][key]
        torch.testing.assert_close(ema_unet(fit_trainer).state_dict()[key], expected)
        torch.testing.assert_close(module.unet.state_dict()[key], raw[2][key])


def test_min_snr_gamma_weights_each_image_by_its_clipped_snr():
    module = make_module()
    module.snr_gamma = 5.0
    x_0 = torch.rand(3, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(x_0)
    t = torch.tensor([5, 500, 990])  # SNR far above, near and far below γ = 5
    alpha_bar = module.noise_scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    x_t = (
        alpha_bar.sqrt().view(-1, 1, 1, 1) * x_0 + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * noise
    )
    with torch.no_grad():
        errors = (module.unet(x_t, t).sample - noise).pow(2).mean(dim=(1, 2, 3))
        loss = module.diffusion_loss(x_0, noise, t)
    expected = (errors * torch.minimum(snr, torch.tensor(5.0)) / snr).mean()
    torch.testing.assert_close(loss, expected)
    assert snr[0] > 5 > snr[2]  # the first image is down-weighted, the last keeps weight 1


def test_non_positive_snr_gamma_is_rejected():
    with pytest.raises(DifftuneError, match="model.snr_gamma=0 must be > 0"):
        DiffusionFineTuner(make_tiny_unet(), DDPMScheduler(), optimizer=sgd(), snr_gamma=0)


def test_offset_noise_adds_one_shared_shift_per_image_and_channel():
    """Guttenberg 2023 / diffusers' --noise_offset: ε + offset·N(0, 1) of shape (B, C, 1, 1)."""
    module = make_module()
    module.noise_offset = 0.1
    x_0 = torch.zeros(64, 3, 16, 16)
    noise, t = module.draw_noise_and_timesteps(x_0, torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    plain = torch.randn(x_0.shape, generator=g)
    offset = torch.randn(64, 3, 1, 1, generator=g)
    torch.testing.assert_close(noise, plain + 0.1 * offset, rtol=0, atol=0)
    assert t.shape == (64,)  # the timesteps are still drawn after the noise


def test_negative_noise_offset_is_rejected():
    with pytest.raises(DifftuneError, match="model.noise_offset=-0.1 must be >= 0"):
        DiffusionFineTuner(make_tiny_unet(), DDPMScheduler(), optimizer=sgd(), noise_offset=-0.1)


@pytest.mark.parametrize(
    ("prediction_type", "expected"),
    [
        ("epsilon", lambda snr: torch.minimum(snr, torch.tensor(5.0)) / snr),
        ("v_prediction", lambda snr: torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)),
        ("sample", lambda snr: torch.minimum(snr, torch.tensor(5.0))),
    ],
)
def test_min_snr_weights_for_each_prediction_target(prediction_type, expected):
    """Hang et al. 2023, eq. 9: min(SNR, γ) expressed for the ε, v or x0 target."""
    from difftune.core.prediction import min_snr_weights

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    t = torch.tensor([10, 300, 900])
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    torch.testing.assert_close(min_snr_weights(scheduler, t, 5.0), expected(snr))
