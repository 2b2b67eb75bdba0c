"""Speed and memory levers (issue 13) leave the float32 training step as it was, on the CPU."""

import copy
import math

import pytest
import torch
import torch.utils.checkpoint
from diffusers import DDPMPipeline, DDPMScheduler
from hydra.utils import instantiate

from difftune.core.module import DiffusionFineTuner
from difftune.errors import DifftuneError
from difftune.run.train import build, train
from helpers.compose import CONF, compose_train, shrink
from helpers.faults import AtStep, run_with
from helpers.models import make_tiny_unet
from helpers.training import batches, sgd


def make(**levers) -> DiffusionFineTuner:
    """The tiny UNet (same weights every call) with a 1000-step DDPM scheduler and SGD."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    return DiffusionFineTuner(make_tiny_unet(), scheduler, optimizer=sgd(1.0), **levers)


def loss_of(module: DiffusionFineTuner, x_0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The training loss on `x_0` with noise and timesteps drawn from `seed`."""
    noise, t = module.draw_noise_and_timesteps(x_0, torch.Generator().manual_seed(seed))
    return module.diffusion_loss(x_0, noise, t)


def gradients(module: DiffusionFineTuner, x_0: torch.Tensor) -> dict[str, torch.Tensor]:
    loss_of(module, x_0).backward()
    return {name: p.grad for name, p in module.unet.named_parameters()}


def test_gradient_checkpointing_gives_the_gradients_of_the_plain_step(monkeypatch):
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    x_0 = batches(1, 4)[0]["images"]
    plain, checkpointed = make(), make(gradient_checkpointing=True)
    assert not plain.unet.is_gradient_checkpointing
    assert checkpointed.unet.is_gradient_checkpointing

    expected = gradients(plain, x_0)
    assert not calls
    got = gradients(checkpointed, x_0)
    assert len(calls) >= 4  # every resnet block of the tiny UNet went through a checkpoint
    assert expected.keys() == got.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=1e-5, msg=name)


def train_steps(module: DiffusionFineTuner, steps: int) -> list[float]:
    """`steps` AdamW steps on fixed batches; the losses. AdamW's first steps move each weight by
    about ±lr whatever its gradient's size, so the weights' tolerance scales with lr."""
    optimizer = torch.optim.AdamW(module.unet.parameters(), lr=1e-4)
    losses = []
    for i, batch in enumerate(batches(steps, 4)):
        loss = loss_of(module, batch["images"], seed=i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_channels_last_trains_as_the_default_memory_format():
    default, nhwc = make(), make(channels_last=True)
    assert nhwc.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not default.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    expected, got = train_steps(default, 3), train_steps(nhwc, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)  # measured: 1.1e-7
    assert nhwc.unet.state_dict().keys() == default.unet.state_dict().keys()
    for name, weight in default.unet.state_dict().items():
        torch.testing.assert_close(nhwc.unet.state_dict()[name], weight, rtol=0, atol=1e-5)  # 3e-6


@pytest.mark.parametrize("fused", [None, True])
def test_the_configured_adamw_builds_fused_or_not_and_steps_alike(fused, cfg_train):
    cfg_train.model.optimizer.fused = fused
    factory = instantiate(cfg_train.model.optimizer)
    reference, tuned = make(), make()
    optimizers = [
        torch.optim.AdamW(
            reference.unet.parameters(),
            lr=cfg_train.model.optimizer.lr,
            weight_decay=cfg_train.model.optimizer.weight_decay,
        ),
        factory(tuned.unet.parameters()),
    ]
    assert optimizers[1].defaults["fused"] is fused
    x_0 = batches(1, 4)[0]["images"]
    for module, optimizer in zip([reference, tuned], optimizers, strict=True):
        loss_of(module, x_0).backward()
        optimizer.step()
    for name, weight in reference.unet.state_dict().items():
        torch.testing.assert_close(tuned.unet.state_dict()[name], weight, rtol=0, atol=1e-6)


def test_the_model_config_carries_the_levers_off_by_default(cfg_train):
    model = cfg_train.model
    assert (model.gradient_checkpointing, model.channels_last, model.compile) == (False,) * 3
    assert model.optimizer.fused is None


def test_train_runs_and_exports_with_the_cheap_levers_on(tmp_path):
    levers = ["model.gradient_checkpointing=true", "model.channels_last=true"]
    cfg = shrink(compose_train(*levers, "model.optimizer.fused=true", output_dir=tmp_path), 2)
    module = build(cfg)[1]
    assert module.unet.is_gradient_checkpointing and module.channels_last
    assert module.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    optimizers = []
    run_with(cfg, AtStep(0, lambda trainer: optimizers.extend(trainer.optimizers)))
    assert optimizers[0].defaults["fused"] is True
    exported = DDPMPipeline.from_pretrained(tmp_path / "pipeline").unet.state_dict()
    plain_dir = tmp_path / "plain"
    train(shrink(compose_train(output_dir=plain_dir), 2))  # the same seeded run, levers off
    plain = DDPMPipeline.from_pretrained(plain_dir / "pipeline").unet.state_dict()
    assert exported.keys() == plain.keys() == module.unet.state_dict().keys()
    # Adam's first steps move a weight by about lr (3e-4) whatever its gradient's size, so a
    # gradient at float32 noise level may move it differently: within a fifth of lr, measured 3e-5
    for name, weight in plain.items():
        torch.testing.assert_close(exported[name], weight, rtol=0, atol=6e-5)


@pytest.mark.parametrize("key", ["gradient_checkpointing", "channels_last", "compile"])
def test_a_lever_that_is_not_a_bool_is_one_line(key):
    with pytest.raises(DifftuneError, match=f"^model.{key}=yes must be true or false$"):
        make(**{key: "yes"})


def test_compile_that_fails_to_build_warns_once_and_trains_eager(monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kwargs):
            raise RuntimeError("backend exploded\nmore detail")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    x_0 = batches(1, 4)[0]["images"]
    eager, module = make(), make(compile=True)
    module.on_fit_start()
    with pytest.warns(UserWarning, match=r"model.compile=true: torch.compile failed "
                      r"\(RuntimeError: backend exploded\); training runs eager"):  # fmt: skip
        loss = loss_of(module, x_0)
    assert torch.equal(loss, loss_of(eager, x_0))
    assert module._compiled_forward is None


def test_compile_that_torch_refuses_warns_and_stays_eager(monkeypatch):
    def refusing_compile(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", refusing_compile)
    module = make(compile=True)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: torch.compile is "
                      r"not supported on Python 3.99\+\); training runs eager"):  # fmt: skip
        module.on_fit_start()
    assert module._compiled_forward is None


def partitioned_without_codegen(monkeypatch) -> None:
    """torch.compile through dynamo, AOTAutograd's decompositions and its min-cut partitioner
    (where checkpointed regions are recomputed), without inductor's C++ codegen (a minute cold)."""
    torch_compile = torch.compile

    def compile_(fn, **kwargs):
        return torch_compile(fn, backend="aot_eager_decomp_partition", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_)


@pytest.mark.slow
@pytest.mark.filterwarnings("error:model.compile=true")  # no silent eager fallback
@pytest.mark.parametrize(
    "levers, backend",
    [({}, "inductor"), ({"gradient_checkpointing": True}, "aot_eager_decomp_partition")],
    ids=["alone", "with checkpointing (the 24 GiB recipe under hardware=gpu)"],
)  # fmt: skip
def test_compiled_unet_trains_as_eager_and_keeps_the_state_dict(levers, backend, monkeypatch):
    if backend != "inductor":
        partitioned_without_codegen(monkeypatch)
    x_0 = batches(1, 4)[0]["images"]
    eager, compiled = make(), make(compile=True, **levers)
    compiled.on_fit_start()
    expected, got = gradients(eager, x_0), gradients(compiled, x_0)
    assert compiled._compiled_calls == 1, "the compiled forward fell back to eager"
    torch.testing.assert_close(loss_of(compiled, x_0), loss_of(eager, x_0), rtol=1e-4, atol=0)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    ema_copy = copy.deepcopy(compiled)  # as EMA's AveragedModel: the copy runs its own weights
    with torch.no_grad():
        for p in ema_copy.unet.parameters():
            p.zero_()
    assert not torch.equal(loss_of(ema_copy, x_0), loss_of(compiled, x_0))


@pytest.mark.filterwarnings("error:model.compile=true")  # no silent eager fallback
def test_train_with_compile_keeps_checkpoint_ema_and_export_keys(tmp_path, monkeypatch):
    compiled_calls = []
    torch_compile = torch.compile

    def dynamo_only_compile(fn, **kwargs):  # dynamo's tracing without inductor's codegen
        compiled = torch_compile(fn, backend="eager", **kwargs)

        def counted(*args, **kwargs):
            compiled_calls.append(1)
            return compiled(*args, **kwargs)

        return counted

    monkeypatch.setattr(torch, "compile", dynamo_only_compile)
    cfg = shrink(compose_train("model.compile=true", "ema=default", output_dir=tmp_path), 2)
    module = build(cfg)[1]
    metrics = train(cfg)
    assert len(compiled_calls) >= 2  # the training steps went through the compiled forward
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"].keys() == module.state_dict().keys()
    exported = DDPMPipeline.from_pretrained(tmp_path / "pipeline").unet.state_dict()
    assert exported.keys() == module.unet.state_dict().keys()


def test_compiled_forward_builds_once_for_the_full_batch_and_leaves_the_rest_eager(monkeypatch):
    """A short last batch or a validation batch would recompile (minutes on a GPU, and a
    dynamic-shape graph for the rest of the run): they run eager, and nothing recompiles."""
    torch_compile, sizes = torch.compile, []

    def dynamo_only_compile(fn, **kwargs):
        compiled = torch_compile(fn, backend="eager", **kwargs)

        def recorded(unet, x_t, *args):
            sizes.append(x_t.shape[0])
            return compiled(unet, x_t, *args)

        return recorded

    monkeypatch.setattr(torch, "compile", dynamo_only_compile)
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    module, eager = make(compile=True), make()
    module.on_fit_start()
    full, short = batches(1, 4)[0]["images"], batches(1, 3)[0]["images"]
    for x_0 in [full, short, full]:  # an epoch's last batch between two full ones
        torch.testing.assert_close(loss_of(module, x_0), loss_of(eager, x_0), rtol=1e-5, atol=0)
    module.eval()
    with torch.no_grad():  # as Lightning validates
        loss_of(module, full)
    module.train()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", False)
    bigger = batches(1, 6)[0]["images"]  # a run whose first batch was short: the full one wins
    loss_of(module, bigger)
    loss_of(module, full)
    assert sizes == [4, 4, 6]
    assert module._compiled_calls == 3


def test_sdpa_and_classic_attention_give_the_same_loss_and_gradients():
    """The attention lever swaps the kernel, not the maths: softmax(QKᵀ/√d)V either way."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    sdpa, classic = make(), make(attention="classic")
    kinds = {type(m.processor) for m in classic.unet.modules() if hasattr(m, "processor")}
    assert kinds == {AttnProcessor}
    assert {type(m.processor) for m in sdpa.unet.modules() if hasattr(m, "processor")} == {
        AttnProcessor2_0
    }
    x_0 = batches(1, 4)[0]["images"]
    torch.testing.assert_close(loss_of(classic, x_0), loss_of(sdpa, x_0), rtol=0, atol=1e-6)
    classic_grads, sdpa_grads = gradients(classic, x_0), gradients(sdpa, x_0)
    for name, grad in sdpa_grads.items():
        torch.testing.assert_close(classic_grads[name], grad, rtol=0, atol=1e-5)


def test_an_unknown_attention_is_one_line():
    with pytest.raises(
        DifftuneError, match=r"^model.attention='flash': expected one of sdpa, classic$"
    ):
        make(attention="flash")


def test_matmul_precision_is_checked_before_the_run_and_set_for_it_alone(tmp_path, monkeypatch):
    """Set for the run, and put back after it with the flags Lightning's Trainer sets: the next
    run in the process (a notebook's, a `-m` sweep's next job) starts from torch's settings."""
    import difftune.run.train as train_module
    from difftune.run.checks import check_train_config

    bad = compose_train("matmul_precision=fast", output_dir=tmp_path / "bad")
    with pytest.raises(DifftuneError, match=r"^matmul_precision='fast': expected null or one of "):
        check_train_config(bad)

    def flags() -> tuple:
        return (torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.benchmark)  # fmt: skip

    seen, build = [], train_module.build

    def recorded_build(cfg):
        built = build(cfg)  # the Trainer sets its flags as it is made
        seen.append(flags())
        return built

    monkeypatch.setattr(train_module, "build", recorded_build)
    before = flags()
    assert before == ("highest", False, False)
    runs = {"tf32": ["matmul_precision=high", "trainer.deterministic=true"],
            "default": ["matmul_precision=null", "+trainer.benchmark=true"]}  # fmt: skip
    for name, overrides in runs.items():
        train(shrink(compose_train(*overrides, output_dir=tmp_path / name), 1))
        assert flags() == before, name
    assert seen == [("high", True, False), ("highest", False, True)]


def test_hardware_gpu_turns_the_measured_levers_on_and_cpu_leaves_them_off(tmp_path):
    for hardware in ("gpu", "multi_gpu"):
        cfg = compose_train(f"hardware={hardware}", output_dir=tmp_path)
        assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
        assert (cfg.model.attention, cfg.matmul_precision) == ("sdpa", "high")
        assert (cfg.data.num_workers, cfg.data.pin_memory, cfg.data.prefetch_factor) == (8, True, 4)
        # measured slower (channels_last) or refused with clipping (fused): left off
        assert not cfg.model.channels_last and cfg.model.optimizer.fused is None
        assert cfg.model.compile is True  # 1.6x on an H200
    assert compose_train("hardware=multi_gpu", output_dir=tmp_path).trainer.strategy == "ddp"
    cpu = compose_train("hardware=cpu", output_dir=tmp_path)
    assert not cpu.model.channels_last and cpu.matmul_precision is None
    assert cpu.model.compile is False  # minutes of build for a CPU run of minutes


def test_fused_adamw_with_clipping_under_fp16_is_one_line_before_the_run(tmp_path):
    """Under fp16 the fused step unscales the gradients itself, after any clip: refused before
    the run. bf16 and float32 have no gradient scaler: the module clips there."""
    from difftune.run.checks import check_train_config

    cfg = compose_train("model.optimizer.fused=true", output_dir=tmp_path)
    for precision in ("32-true", "bf16-mixed"):
        cfg.trainer.precision = precision
        check_train_config(cfg)
    cfg.trainer.precision = "16-mixed"
    refused = (r"^model.optimizer.fused=true with trainer.gradient_clip_val=1.0 under "
               r"trainer.precision=16-mixed: .*fused=null, trainer.gradient_clip_val=0 or "
               r"trainer.precision=bf16-mixed$")  # fmt: skip
    with pytest.raises(DifftuneError, match=refused):
        check_train_config(cfg)
    cfg.trainer.gradient_clip_val = 0
    check_train_config(cfg)


@pytest.mark.filterwarnings("ignore:trainer.precision=bf16-mixed on CPU")
def test_fused_adamw_under_bf16_is_clipped_as_lightning_clips_plain_adamw(tmp_path):
    """Lightning refuses to clip a fused optimizer under any mixed precision; the module clips it
    itself where no scaler is in play. A clip to norm 1e-8 shrinks AdamW's first step well below lr
    (g/(|g|+eps) with |g| mostly below eps): the fused run moves as the plain clipped one."""
    start = DDPMPipeline.from_pretrained(CONF.parent / "src/difftune/assets/tiny_base").unet
    moved = {}
    for name, overrides in {
        "fused": ["model.optimizer.fused=true", "trainer.gradient_clip_val=1e-8"],
        "plain": ["trainer.gradient_clip_val=1e-8"],
        "unclipped": ["model.optimizer.fused=true", "trainer.gradient_clip_val=null"],
    }.items():  # fmt: skip
        cfg = shrink(compose_train(*overrides, output_dir=tmp_path / name), 1)
        cfg.trainer.precision = "bf16-mixed"
        train(cfg)
        weights = DDPMPipeline.from_pretrained(tmp_path / name / "pipeline").unet.state_dict()
        moved[name] = {k: w - start.state_dict()[k] for k, w in weights.items()}
    for key, delta in moved["plain"].items():
        torch.testing.assert_close(moved["fused"][key], delta, rtol=1e-3, atol=1e-10, msg=key)
    largest = {name: max(d.abs().max().item() for d in m.values()) for name, m in moved.items()}
    assert largest["unclipped"] > 10 * largest["fused"] > 0, largest  # measured 15x


def test_prefetch_factor_reaches_the_loader_and_is_checked():
    from difftune.data import ImageDataModule

    loader = ImageDataModule(source="synthetic", num_images=8, num_workers=1, prefetch_factor=3)
    assert loader.train_dataloader().prefetch_factor == 3
    assert (
        ImageDataModule(source="synthetic", num_images=8, prefetch_factor=3).prefetch_factor is None
    )
    with pytest.raises(DifftuneError, match=r"^data.prefetch_factor=0 must be an integer >= 1$"):
        ImageDataModule(source="synthetic", num_images=8, num_workers=1, prefetch_factor=0)


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_the_loader_keys_are_declared_by_every_data_option(data, tmp_path):
    """`data.pin_memory=true` as the README writes it, not `+data.pin_memory=true`: the keys
    exist in every data config (before: "no such key" unless hardware=gpu had added them)."""
    overrides = ("data.num_workers=3", "data.pin_memory=true", "data.persistent_workers=false",
                 "data.prefetch_factor=5")  # fmt: skip
    cfg = compose_train(f"data={data}", *overrides, output_dir=tmp_path)
    assert (cfg.data.pin_memory, cfg.data.persistent_workers, cfg.data.prefetch_factor) == (
        True, False, 5)  # fmt: skip
