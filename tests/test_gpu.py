"""The CUDA paths: bf16 fine-tuning, seeded GPU noise, guided sampling on the GPU.

Skipped without a CUDA device (CI has none); run on a GPU machine with `pytest -m gpu`.
"""

import csv

import pytest
import torch
from diffusers import DDPMPipeline
from lightning.pytorch import Callback

from difftune.guidance import ColorLoss, Guidance
from difftune.guidance.guide import apply_guidance
from difftune.run.train import train
from helpers.compose import compose_train, shrink
from helpers.faults import run_with
from helpers.models import make_tiny_unet

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def on_gpu(cfg, precision: str):
    cfg = shrink(cfg, steps=6)
    cfg.trainer.update(accelerator="gpu", devices=1, precision=precision, log_every_n_steps=1)
    cfg.trainer.deterministic = True  # cuDNN's fastest backward kernels are not reproducible
    return cfg


def losses(output_dir) -> list[float]:
    with open(output_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_bf16_fine_tune_on_gpu_exports_a_working_pipeline(tmp_path):
    metrics = train(on_gpu(compose_train(output_dir=tmp_path), "bf16-mixed"))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipeline").to("cuda")
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 32, 32, 3)
    # The exported weights are float32 (bf16 autocast leaves the master weights alone).
    assert pipe.unet.dtype == torch.float32


def test_same_seed_same_losses_on_gpu(tmp_path):
    """Noise/timesteps come from a CUDA generator seeded per batch: two runs draw the same."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        train(on_gpu(compose_train(output_dir=out), "32-true"))  # seeds everything, as train.py
        runs.append(losses(out))
    assert len(runs[0]) == 6
    torch.testing.assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]), atol=1e-4, rtol=0)


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls, so GPU and CPU agree to float32 rounding."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def test_colour_guidance_step_on_gpu_matches_cpu(no_tf32):
    """One guided step (gradient through the UNet) gives the same x_t and ε̂ on both devices."""
    unet = make_tiny_unet().eval()
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t, alpha_prod_t = torch.tensor(500), torch.tensor(0.3)
    guidance = Guidance(ColorLoss(target_rgb=(0.9, 0.6, 0.2)), scale=40.0, through_unet=True)

    def step(device: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = x_t.to(device).requires_grad_()
        out = unet.to(device)(x, t.to(device)).sample
        new_x, new_out = apply_guidance([guidance], x, out, alpha_prod_t.to(device), "epsilon")
        return new_x.cpu(), new_out.cpu()

    cpu, gpu = step("cpu"), step("cuda")
    torch.testing.assert_close(gpu[0], cpu[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu[1], cpu[1], atol=1e-4, rtol=1e-4)
    assert not torch.equal(cpu[0], x_t)  # the step did move x_t


def test_hardware_gpu_levers_train_like_plain_bf16_and_export(tmp_path):
    """hardware=gpu's levers (TF32, sdpa attention, torch.compile, pinned prefetching workers)
    leave the losses of the same seeded run where plain eager bf16 with the classic attention
    puts them."""
    runs = {}
    for name, overrides in {
        "levers": ["hardware=gpu"],
        "plain": ["hardware=gpu", "matmul_precision=null", "data.num_workers=0",
                  "model.attention=classic", "model.compile=false"],
    }.items():  # fmt: skip
        cfg = on_gpu(compose_train(*overrides, output_dir=tmp_path / name), "bf16-mixed")
        assert (cfg.matmul_precision == "high") is (name == "levers")
        train(cfg)
        runs[name] = torch.tensor(losses(tmp_path / name))
    assert torch.get_float32_matmul_precision() == "highest"  # each run's TF32 was its own
    assert len(runs["levers"]) == 6
    torch.testing.assert_close(runs["levers"], runs["plain"], atol=2e-2, rtol=5e-2)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "levers" / "pipeline")
    assert pipe.unet.dtype == torch.float32


class NanAtStep2(Callback):
    """NaN images at step 2; conv_in's weight at the start of every step."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights.append(pl_module.unet.conv_in.weight.detach().clone())
        if trainer.global_step == 2:
            batch["images"].fill_(float("nan"))


def test_fused_adamw_skips_a_nan_batch_on_the_gpu(tmp_path):
    """The guard's skip on the device: the fused step's found_inf, read back through an event."""
    cfg = on_gpu(compose_train("model.optimizer.fused=true", output_dir=tmp_path), "bf16-mixed")
    poison = NanAtStep2()
    metrics = run_with(cfg, poison)
    assert len(poison.weights) == 6
    assert torch.equal(poison.weights[2], poison.weights[3])  # the NaN step changed nothing
    assert not torch.equal(poison.weights[3], poison.weights[4])
    assert metrics["train/nonfinite_skipped"] == 1.0
