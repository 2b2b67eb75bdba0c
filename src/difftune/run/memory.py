"""Out of memory: an allocation torch could not make, as one line naming the keys that size it."""

import re
import sys

from omegaconf import DictConfig

from difftune.errors import DifftuneError, error_chain

TRAIN_ADVICE = (
    "lower data.batch_size and raise trainer.accumulate_grad_batches to keep the effective "
    "batch, set model.gradient_checkpointing=true, or lower data.image_size (README: Speed and "
    "memory levers, the 24 GiB recipe)"
)
SAMPLE_ADVICE = (
    "lower batch_size (num_images then takes more batches) or image_size; the starting noise of "
    "all num_images is drawn at once"
)


def on_the_gpu(err: BaseException) -> bool:
    """Whether `err` is torch's `OutOfMemoryError` (torch is not imported for it: an error
    raised before torch loaded is not torch's)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(err, torch.OutOfMemoryError)


def out_of_memory(err: BaseException | None) -> BaseException | None:
    """The allocation failure behind `err` (torch's CUDA/CPU allocator, Python's), else None."""
    for e in error_chain(err):
        if isinstance(e, MemoryError) or on_the_gpu(e):
            return e
        if isinstance(e, RuntimeError) and "DefaultCPUAllocator" in str(e):
            return e
    return None


def _what(found: BaseException) -> str:
    """'GPU memory (tried to allocate 2.00 GiB; 1.23 GiB free of 79.19 GiB)', or the CPU's."""
    text = str(found)
    on_gpu = on_the_gpu(found)
    gpu_try = re.search(r"Tried to allocate ([\d.]+ ?[KMGT]?i?B)", text)
    cpu_try = re.search(r"you tried to allocate (\d+) bytes", text)
    free = re.search(r"total capacity of ([\d.]+ ?\w+) of which ([\d.]+ ?\w+) is free", text)
    details = []
    if gpu_try:
        details.append(f"tried to allocate {gpu_try.group(1)}")
    elif cpu_try:
        details.append(f"tried to allocate {int(cpu_try.group(1)) / 2**30:.1f} GiB")
    if free:
        details.append(f"{free.group(2)} free of {free.group(1)}")
    kind = "GPU memory" if on_gpu else "memory"
    return f"{kind} ({'; '.join(details)})" if details else kind


def memory_error(err: BaseException, cfg: DictConfig | None) -> DifftuneError | None:
    """One line for a run that ran out of memory: where, the sizes it had, what to lower."""
    found = out_of_memory(err)
    if found is None:
        return None
    where = next((e.memory_hint for e in error_chain(err) if hasattr(e, "memory_hint")), "")
    if isinstance(cfg, DictConfig) and "trainer" in cfg:
        data, trainer = cfg.get("data", {}), cfg.trainer
        sizes = (
            f"data.batch_size={data.get('batch_size')} data.image_size={data.get('image_size')} "
            f"trainer.precision={trainer.get('precision', '32-true')}"
        )
        advice = TRAIN_ADVICE
    elif isinstance(cfg, DictConfig):
        size = cfg.get("image_size")
        shown = "null (the UNet's sample_size)" if size is None else size
        sizes = (
            f"num_images={cfg.get('num_images')} batch_size={cfg.get('batch_size')} "
            f"image_size={shown} precision={cfg.get('precision')}"
        )
        advice = SAMPLE_ADVICE
    else:
        sizes, advice = "", "use a smaller batch or image size"
    at = f" {where}" if where else ""
    with_sizes = f" with {sizes}" if sizes else ""
    return DifftuneError(f"out of {_what(found)}{at}{with_sizes}: {advice}")
