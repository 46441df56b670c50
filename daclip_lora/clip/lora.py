"""LoRA (peft) on the DA-CLIP controller: attach, count, save, load, merge.

open_clip's attention is ``nn.MultiheadAttention``, whose forward never calls ``out_proj`` as a module:
a LoRA on ``attn.out_proj`` alone would never run. We target the ``attn`` module itself (peft >= 0.17
adapts both its ``in_proj`` and ``out_proj``) plus ``mlp.c_fc``/``mlp.c_proj``. CLIP is never touched.

An adapter folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` (peft format, keys
relative to ``visual_control`` with peft's ``base_model.model.`` prefix), ``controller_extras.safetensors``
(fully trained extras: zero modules, ``logit_scale``) and ``daclip_lora_adapter.json`` (how it was made).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from .._utils.io import atomic_dir
from .._utils.lora import AdapterError, LoraSpec, unload_lora
from .._utils.suggest import suggest
from .model import DaCLIP

logger = logging.getLogger(__name__)

__all__ = [
    "CONTROLLER_TARGETS",
    "AdapterError",
    "LoraReport",
    "add_controller_lora",
    "controller_lora_config",
    "has_controller_lora",
    "load_controller_lora",
    "merge_controller_lora",
    "save_controller_lora",
    "unload_lora",
]

CONTROLLER_TARGETS = ("attn", "mlp.c_fc", "mlp.c_proj")
ZERO_MODULE_MODES = ("train", "lora", "frozen")
ADAPTER_NAME = "default"
PEFT_PREFIX = "base_model.model."
META_FILE = "daclip_lora_adapter.json"
EXTRAS_FILE = "controller_extras.safetensors"
#: version of the adapter folder this daclip_lora writes (1: before the key existed; same layout)
FORMAT_VERSION = 2


@dataclass
class LoraReport:
    """Trainable parameters after attaching LoRA."""

    trainable: int
    lora: int
    extras: int
    reference: int  # parameters of the module the percentage refers to (the controller)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(1, self.reference)

    def __str__(self) -> str:
        return (f"trainable {self.trainable:,} parameters ({self.percent:.2f}% of {self.reference:,}): "
                f"LoRA {self.lora:,} + fully trained {self.extras:,}")


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise ImportError("controller LoRA needs peft>=0.17: pip install 'peft>=0.17'") from e
    return peft


def controller_lora_config(spec: LoraSpec, num_blocks: int, zero_modules: str = "lora"):
    """A peft ``LoraConfig`` targeting the controller blocks and modules named in ``spec``."""
    _peft()
    spec = LoraSpec.coerce(spec, "controller.lora").validate("controller.lora")
    if zero_modules not in ZERO_MODULE_MODES:
        raise AdapterError(f"zero_modules must be one of {', '.join(ZERO_MODULE_MODES)}, got {zero_modules!r}"
                           f"{suggest(zero_modules, ZERO_MODULE_MODES)}")
    targets = list(spec.targets or CONTROLLER_TARGETS)
    for t in targets:
        if t not in CONTROLLER_TARGETS:
            hint = " (a LoRA on attn.out_proj alone is never called by nn.MultiheadAttention: target 'attn')" \
                if t.startswith("attn.") else ""
            raise AdapterError(f"unknown controller LoRA target {t!r}{hint}; valid targets: "
                               f"{', '.join(CONTROLLER_TARGETS)}.{suggest(t, CONTROLLER_TARGETS)}")
    blocks = list(range(num_blocks)) if spec.blocks is None else list(spec.blocks)
    if not blocks:
        raise AdapterError("LoRA blocks is empty: the adapter would match no module; omit it to adapt all blocks")
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise AdapterError(f"LoRA blocks {bad} do not exist: the controller has blocks 0-{num_blocks - 1}")
    block_re = "|".join(str(b) for b in sorted(set(blocks)))
    pattern = rf"transformer\.transformer\.resblocks\.({block_re})\.({'|'.join(map(re.escape, targets))})"
    if zero_modules == "lora":
        pattern += rf"|transformer\.zero_modules\.({block_re})"
    return spec.peft_config(f"(?:{pattern})")


def has_controller_lora(model: DaCLIP) -> bool:
    return getattr(model, "_controller_lora", None) is not None


def _set_extras_trainable(model: DaCLIP, zero_modules: str, train_logit_scale: bool) -> None:
    for name, p in model.visual_control.transformer.zero_modules.named_parameters():
        if "lora_" not in name:  # the LoRA weights of LoRA'd zero modules stay trainable
            p.requires_grad = zero_modules == "train"
    model.logit_scale.requires_grad = train_logit_scale


def _inject(model: DaCLIP, config) -> None:
    peft = _peft()
    try:
        peft.inject_adapter_in_model(config, model.visual_control, adapter_name=ADAPTER_NAME)
    except ValueError as e:
        if "not found" in str(e) or "did not match" in str(e).lower():
            raise AdapterError(f"the LoRA targets match no module of the controller ({e}); valid targets: "
                               f"{', '.join(CONTROLLER_TARGETS)}") from None
        raise AdapterError(f"peft refused this LoRA configuration: {e}") from None
    _pin_mha_base_weights(model.visual_control)


def _pin_mha_base_weights(root: nn.Module) -> int:
    """Keep the frozen weights under peft's ``nn.MultiheadAttention`` LoRA bit-exact.

    peft adapts an ``nn.MultiheadAttention`` by merging the LoRA delta into the frozen ``in_proj_weight``
    and ``out_proj.weight`` for each forward and unmerging by subtraction afterwards, which leaves the
    frozen weights off by float rounding after every call (they drift during training, and a resumed
    run no longer matches). We remember the frozen tensors before each forward and put them back after.
    """
    from peft.tuners.lora.layer import MultiheadAttention as LoraMHA

    def stash(module, args, kwargs=None):
        base = module.get_base_layer()
        module._daclip_pinned = (base.in_proj_weight.data, base.out_proj.get_base_layer().weight.data)

    def restore(module, args, output):
        pinned = getattr(module, "_daclip_pinned", None)
        if pinned is not None and not module.merged:
            base = module.get_base_layer()
            base.in_proj_weight.data = pinned[0]
            base.out_proj.get_base_layer().weight.data = pinned[1]
        module._daclip_pinned = None

    count = 0
    for module in root.modules():
        if isinstance(module, LoraMHA) and not getattr(module, "_daclip_pin_hooks", False):
            module.register_forward_pre_hook(stash)
            module.register_forward_hook(restore)
            module._daclip_pin_hooks = True
            count += 1
    return count


def add_controller_lora(
    model: DaCLIP,
    spec: Optional[LoraSpec] = None,
    zero_modules: str = "lora",
    train_logit_scale: bool = True,
) -> LoraReport:
    """Attach LoRA to the controller's transformer blocks; only LoRA (and chosen extras) stay trainable.

    Args:
        model: a :class:`DaCLIP`; its CLIP is locked and never adapted.
        spec: rank, alpha, dropout, targets (``attn``, ``mlp.c_fc``, ``mlp.c_proj``), blocks, DoRA,
            peft ``init_lora_weights``.
        zero_modules: ``"lora"`` (LoRA on the zero modules), ``"train"`` (fully trainable) or
            ``"frozen"``.
        train_logit_scale: keep DA-CLIP's ``logit_scale`` trainable.

    Returns:
        the trainable-parameter report (percentages relative to the controller).
    """
    if not isinstance(model, DaCLIP):
        raise AdapterError(f"controller LoRA needs a DaCLIP model, got {type(model).__name__}")
    if has_controller_lora(model):
        raise AdapterError("this model already has a controller LoRA; merge it (merge_controller_lora) first")
    spec = LoraSpec.coerce(spec, "controller.lora")
    reference = sum(p.numel() for p in model.visual_control.parameters())
    config = controller_lora_config(spec, model.num_layers, zero_modules)
    model.lock_clip()
    _inject(model, config)
    _set_extras_trainable(model, zero_modules, train_logit_scale)
    model._controller_lora = {"config": config, "zero_modules": zero_modules,
                              "train_logit_scale": train_logit_scale, "spec": asdict(spec)}
    report = lora_report(model, reference)
    logger.info("controller LoRA: %s", report)
    return report


def lora_report(model: nn.Module, reference: int) -> LoraReport:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lora = sum(p.numel() for n, p in trainable if "lora_" in n)
    total = sum(p.numel() for _, p in trainable)
    return LoraReport(trainable=total, lora=lora, extras=total - lora, reference=reference)


def _extras(model: DaCLIP) -> Dict[str, torch.Tensor]:
    info = model._controller_lora
    out: Dict[str, torch.Tensor] = {}
    if info["zero_modules"] == "train":
        for name, p in model.visual_control.transformer.zero_modules.named_parameters():
            if "lora_" not in name:
                out[f"visual_control.transformer.zero_modules.{name}"] = p
    if info["train_logit_scale"]:
        out["logit_scale"] = model.logit_scale
    return out


def save_controller_lora(model: DaCLIP, out_dir: Union[str, Path], model_name: Optional[str] = None) -> Path:
    """Write the adapter folder (atomically: a temporary folder renamed at the end)."""
    from safetensors.torch import save_file

    peft = _peft()
    if not has_controller_lora(model):
        raise AdapterError("the model has no controller LoRA to save; call add_controller_lora first")
    info = model._controller_lora
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        adapter = peft.get_peft_model_state_dict(model.visual_control, adapter_name=ADAPTER_NAME)
        save_file({PEFT_PREFIX + k: v.detach().float().contiguous().cpu() for k, v in adapter.items()},
                  str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        info["config"].save_pretrained(str(tmp))
        save_file({k: v.detach().float().contiguous().cpu() for k, v in _extras(model).items()} or
                  {"_empty": torch.zeros(0)}, str(tmp / EXTRAS_FILE), metadata={"format": "pt"})
        meta = {"kind": "controller_lora", "format_version": FORMAT_VERSION, "model_name": model_name,
                "zero_modules": info["zero_modules"], "train_logit_scale": info["train_logit_scale"],
                "lora": info["spec"]}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def load_controller_lora(model: DaCLIP, adapter_dir: Union[str, Path]) -> Dict[str, object]:
    """Attach a saved controller adapter (and its extras) to a model built from the same base."""
    from safetensors.torch import load_file

    peft = _peft()
    adapter_dir = Path(adapter_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors", META_FILE):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir} is not a controller adapter folder: {name} is missing")
    meta = json.loads((adapter_dir / META_FILE).read_text())
    if meta.get("kind") != "controller_lora":
        raise AdapterError(f"{adapter_dir} holds a {meta.get('kind')!r} adapter, not a controller LoRA")
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise AdapterError(f"{adapter_dir / META_FILE} has format_version {meta['format_version']}; this "
                           f"daclip_lora reads up to {FORMAT_VERSION}: upgrade daclip_lora")
    if has_controller_lora(model):
        raise AdapterError("this model already has a controller LoRA; merge it (merge_controller_lora) first")
    config = peft.LoraConfig.from_pretrained(str(adapter_dir))
    model.lock_clip()
    _inject(model, config)
    weights = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v
               for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items()}
    expected = {k: v.shape for k, v in peft.get_peft_model_state_dict(model.visual_control).items()}
    _check_keys(adapter_dir / "adapter_model.safetensors", weights, expected)
    peft.set_peft_model_state_dict(model.visual_control, weights, adapter_name=ADAPTER_NAME)
    extras = load_file(str(adapter_dir / EXTRAS_FILE)) if (adapter_dir / EXTRAS_FILE).is_file() else {}
    extras.pop("_empty", None)
    params = dict(model.named_parameters())
    _check_keys(adapter_dir / EXTRAS_FILE, extras, {k: params[k].shape for k in extras if k in params})
    with torch.no_grad():
        for k, v in extras.items():
            params[k].copy_(v)
    _set_extras_trainable(model, meta["zero_modules"], meta["train_logit_scale"])
    model._controller_lora = {"config": config, "zero_modules": meta["zero_modules"],
                              "train_logit_scale": meta["train_logit_scale"], "spec": meta.get("lora", {})}
    return meta


def _check_keys(source: Path, got: Dict[str, torch.Tensor], expected: Dict[str, torch.Size]) -> None:
    unknown = sorted(set(got) - set(expected))
    missing = sorted(set(expected) - set(got))
    wrong = [k for k in got if k in expected and got[k].shape != expected[k]]
    if unknown or missing or wrong:
        detail = []
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} tensors of other shapes (e.g. {k}: {tuple(got[k].shape)} in the file, "
                          f"{tuple(expected[k])} in the model)")
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unknown:
            detail.append(f"{len(unknown)} unexpected (e.g. {unknown[0]})")
        raise AdapterError(f"{source} does not fit this model: {'; '.join(detail)}. It was probably trained on "
                           f"another DA-CLIP architecture or with other LoRA targets.")


def merge_controller_lora(model: DaCLIP) -> DaCLIP:
    """Bake the controller LoRA into the controller weights; the model is a plain DaCLIP again."""
    if not has_controller_lora(model):
        raise AdapterError("the model has no controller LoRA to merge")
    unload_lora(model.visual_control, merge=True)
    model._controller_lora = None
    return model
