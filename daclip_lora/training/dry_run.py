"""``train --dry-run``: what a run would train, on what, for how long, and how much memory a device needs.

Nothing is trained or written. The datasets are indexed (no image is decoded), the model is built, and one
training step's forward runs on the **meta** device at the per-device batch and patch size, where
``torch.autograd.graph.saved_tensors_hooks`` adds up what autograd keeps for the backward pass. The estimate per
device is then

    weights (each part in the dtype the run keeps it in) + gradients (fp32, trainable)
    + optimizer states (AdamW/Adam 8 bytes per trainable parameter, Lion 4, AdamW8bit 2) + EMA (fp32)
    + activations saved for backward (halved for floating-point tensors under bf16/fp16 autocast; under
      gradient checkpointing, plus the largest checkpointed block's own activations, held while it is recomputed)

It leaves out the transient peaks (one layer's workspace, the recomputation of one block under gradient
checkpointing), the CUDA context and the allocator's fragmentation. Its error against measured runs is in
``docs/benchmarks.md#dry-run-memory-estimate``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["DryRun", "OPTIMIZER_STATE_BYTES", "dry_run", "format_dry_run", "saved_activation_bytes"]

#: bytes of optimizer state per trainable parameter
OPTIMIZER_STATE_BYTES = {"AdamW": 8, "Adam": 8, "Lion": 4, "AdamW8bit": 2}
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DryRun:
    """What :func:`dry_run` found (sizes in bytes)."""

    name: str
    task: str
    datasets: Dict[str, Dict[str, int]]
    parts: Dict[str, Tuple[int, int, str]]  # name -> (trainable, frozen, dtype)
    steps: int
    global_batch: int
    train_size: int
    memory: Dict[str, int] = field(default_factory=dict)
    setting: str = ""

    @property
    def peak(self) -> int:
        return sum(self.memory.values())


def saved_activation_bytes(step: Callable[[], Any], params: List[nn.Parameter], half: bool,
                           blocks: Sequence[nn.Module] = ()) -> Tuple[int, List[int]]:
    """Bytes autograd saves for the backward pass while ``step()`` runs, in all and within each of ``blocks``
    (parameters excluded: they are counted as weights); floating-point tensors at 2 bytes an element when
    ``half`` (autocast does not reach meta tensors)."""
    own = {id(p) for p in params}
    seen: Dict[int, torch.Tensor] = {}  # a tensor saved by several ops (or views of one) is held once
    total, per_block, active = [0], [0] * len(blocks), []

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in own and id(base) not in seen:
            seen[id(base)] = base  # kept alive for the probe, so ids stay unique
            size = base.numel() * (2 if half and base.is_floating_point() else base.element_size())
            total[0] += size
            if active:
                per_block[active[-1]] += size
        return t

    def leave(module: nn.Module, args: Any, output: Any) -> None:  # a hook returning a value replaces the output
        active.pop()

    handles = [h for i, b in enumerate(blocks) for h in (
        b.register_forward_pre_hook(lambda m, a, i=i: active.append(i)), b.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _fused_attention():
            step()
    finally:
        for h in handles:
            h.remove()
    return total[0], per_block


def _activations(task: Any, batch_size: int, params: List[nn.Parameter], half: bool, checkpointing: bool) -> int:
    """What one step saves for backward; under gradient checkpointing, plus the largest checkpointed block's own
    activations, which its recomputation holds during the backward pass."""
    probe = task.memory_probe(batch_size)
    saved, _ = saved_activation_bytes(probe, params, half)
    blocks = task.checkpointed_blocks() if checkpointing else []
    if not blocks:
        return saved
    task.gradient_checkpointing(False)
    try:
        _, per_block = saved_activation_bytes(probe, params, half, blocks)
    finally:
        task.gradient_checkpointing(True)
    return saved + max(per_block)


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    """On the meta device ``scaled_dot_product_attention`` falls back to the math path, which saves the whole
    attention matrix; the fused kernels a real run uses (flash / memory-efficient on CUDA, flash on CPU) save
    O(tokens) instead. During the probe, unmasked attention goes through the CPU flash kernel's meta function."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if attn_mask is not None or kwargs or q.device.type != "meta":
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                            **kwargs)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal,
                                                                           scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _parts(task: Any, precision: str) -> Dict[str, Tuple[int, int, str, int]]:
    """name -> (trainable, frozen, frozen dtype name, bytes of the part's weights)."""
    out = {}
    for name, (module, dtype) in task.parts(_HALF.get(precision, torch.float32)).items():
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        size = trainable * 4 + frozen * torch.empty((), dtype=dtype).element_size()
        out[name] = (trainable, frozen, str(dtype).replace("torch.", ""), size)
    return out


def dry_run(opt: Any) -> DryRun:
    """Index the datasets, build the model and estimate one device's peak memory (nothing is trained)."""
    from .tasks import get_task

    task = get_task(opt.task).trainer_class()(opt)
    train = next(d for d in opt.datasets.values() if d.phase == "train")
    rt = opt.runtime
    parts = _parts(task, rt.mixed_precision)
    trainable = sum(p[0] for p in parts.values())
    report = DryRun(opt.name, opt.task, task.composition(), {k: v[:3] for k, v in parts.items()}, opt.train.niter,
                    train.batch_size * rt.gradient_accumulation_steps, len(task.train_dataset()))
    report.memory = {"weights": sum(p[3] for p in parts.values()), "gradients": trainable * 4,
                     "optimizer": trainable * OPTIMIZER_STATE_BYTES[opt.train.optimizer],
                     "ema": trainable * 4 if rt.ema_decay else 0}
    if task.memory_probe(train.batch_size) is not None:
        params = [p for m, _ in task.parts(torch.float32).values() for p in m.parameters()]
        report.memory["activations"] = _activations(task, train.batch_size, params, rt.mixed_precision in _HALF,
                                                    rt.gradient_checkpointing)
    report.setting = (f"batch {train.batch_size} per device, patch {train.patch_size or 'whole images'}, "
                      f"{rt.mixed_precision if rt.mixed_precision != 'no' else 'fp32'}, gradient checkpointing "
                      f"{'on' if rt.gradient_checkpointing else 'off'}, {opt.train.optimizer}")
    return report


def _bytes(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def format_dry_run(r: DryRun) -> str:
    """The dry run as the console shows it."""
    lines = [f"dry run of {r.name} (task {r.task}): nothing is trained or written", "datasets:"]
    for phase, counts in r.datasets.items():
        lines.append(f"  {phase}: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    lines.append("parameters: trainable / frozen (frozen kept in)")
    width = max(len(k) for k in r.parts)
    for name, (trainable, frozen, dtype) in r.parts.items():
        lines.append(f"  {name:<{width}}  {_count(trainable):>9} / {_count(frozen):>9}  ({dtype})")
    samples = r.steps * r.global_batch
    lines.append(f"steps: {r.steps} x {r.global_batch} samples = {samples:,} samples, "
                 f"{samples / max(1, r.train_size):.1f} epochs of {r.train_size} training samples")
    parts = " + ".join(f"{k} {_bytes(v)}" for k, v in r.memory.items())
    missing = "" if "activations" in r.memory else " (activations not estimated for this task)"
    lines.append(f"estimated peak memory per device: {_bytes(r.peak)} = {parts}{missing}")
    lines.append(f"  ({r.setting}; leaves out transient peaks and the CUDA context: measured runs needed up to 1.5x "
                 f"the estimate's activation part, docs/benchmarks.md#dry-run-memory-estimate)")
    return "\n".join(lines)
