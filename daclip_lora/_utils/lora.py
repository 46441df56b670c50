"""One typed LoRA specification, validated in one place, for every adapter daclip_lora attaches.

The same :class:`LoraSpec` describes the DA-CLIP controller LoRA (``controller.lora``), the UNet LoRA
(``sd.lora``), the VAE-encoder LoRA (``sd.vae_encoder_lora``) and the text-encoder LoRA
(``sd.text_encoder_lora``); it is the options block, the value
stored in ``restoration.json``, and the source of peft's ``LoraConfig``. Light on purpose: peft is
imported only when a config is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from torch import nn

__all__ = ["AdapterError", "LoraSpec", "INIT_METHODS", "adapters_disabled", "inject_lora", "set_lora_scale",
           "unload_lora"]

#: peft's ``init_lora_weights`` values (``pissa_niter_N`` and ``corda`` variants are accepted by prefix).
INIT_METHODS = ("gaussian", "eva", "olora", "pissa", "corda", "loftq", "orthogonal")


class AdapterError(ValueError):
    """A LoRA specification or adapter folder is invalid or does not fit the model."""


@dataclass
class LoraSpec:
    """A LoRA adapter: rank, scaling (``alpha / rank``), dropout, targets (module-name suffixes), the transformer
    blocks to adapt (controller only), DoRA, and peft's initialisation."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: Optional[List[str]] = None  # None: the adapted model's default targets
    blocks: Optional[List[int]] = None  # controller only: transformer blocks to adapt; None: all
    use_dora: bool = False
    init_lora_weights: Union[bool, str] = True

    def validate(self, where: str = "lora", allow_blocks: bool = True) -> "LoraSpec":
        """Check every field; ``where`` (e.g. ``sd.lora``) prefixes the messages. Returns ``self``.

        Raises:
            AdapterError: with the key, the bad value and what is expected.
        """
        self._validate_numbers(where)
        if self.targets is not None:
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise AdapterError(f"{where}.targets must be a non-empty list of module names, got {self.targets!r}; "
                                   f"omit it for the default targets")
        if self.blocks is not None and not allow_blocks:
            raise AdapterError(f"{where}.blocks: only the DA-CLIP controller LoRA selects transformer blocks; "
                               f"remove it (choose the adapted layers with {where}.targets)")
        init = self.init_lora_weights
        if not isinstance(init, bool) and not (isinstance(init, str) and init.startswith(INIT_METHODS)):
            raise AdapterError(f"{where}.init_lora_weights must be true, false or one of {', '.join(INIT_METHODS)}, "
                               f"got {init!r}")
        return self

    def _validate_numbers(self, where: str) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise AdapterError(f"{where}.rank must be an integer >= 1, got {self.rank!r}; typical values are 4-64")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise AdapterError(f"{where}.alpha must be positive, got {self.alpha!r} (the LoRA scale is alpha / rank)")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise AdapterError(f"{where}.dropout must be in [0, 1), got {self.dropout!r}")

    def peft_config(self, target_modules: Union[str, Sequence[str]]) -> Any:
        """peft's ``LoraConfig`` for these settings on ``target_modules`` (names, or a regex string)."""
        from peft import LoraConfig

        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        return LoraConfig(r=self.rank, lora_alpha=float(self.alpha), lora_dropout=float(self.dropout),
                          target_modules=targets, use_dora=bool(self.use_dora),
                          init_lora_weights=self.init_lora_weights)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as stored in ``restoration.json`` (``blocks`` only when set)."""
        out = dataclasses.asdict(self)
        if out["blocks"] is None:
            out.pop("blocks")
        return out

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]], where: str = "lora") -> "LoraSpec":
        """A spec from a mapping (``restoration.json``, Python callers); unknown keys are an error."""
        data = dict(data or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise AdapterError(f"{where}: unknown LoRA setting(s) {unknown}; valid: {', '.join(sorted(fields))}")
        return cls(**data)

    @classmethod
    def coerce(cls, spec: Union["LoraSpec", Mapping[str, Any], None], where: str = "lora") -> "LoraSpec":
        return spec if isinstance(spec, LoraSpec) else cls.from_dict(spec, where)


def inject_lora(module: nn.Module, config: Any, adapter_name: str = "default") -> nn.Module:
    """Attach a peft ``LoraConfig`` to ``module`` in place through peft's own API, and return it.

    We call ``peft.inject_adapter_in_model`` rather than the ``add_adapter`` of diffusers' or transformers'
    PEFT mixins: those gate on their own minimum peft version (transformers 5.24 refuses every peft that
    exists today, 0.21.2), while the injected layers are the same. The mixins' flag is set afterwards so that
    their ``enable_adapters``/``disable_adapters`` still work on the result.

    Raises:
        ValueError: from peft, when the targets match no module of ``module``.
    """
    from peft import inject_adapter_in_model

    config.base_model_name_or_path = None  # as diffusers' add_adapter: the base is not a hub model
    inject_adapter_in_model(config, module, adapter_name=adapter_name)
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = True
    return module


def unload_lora(module: nn.Module, merge: bool = True) -> nn.Module:
    """Remove peft LoRA layers from ``module`` in place, merging their weights first by default."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    top = [(n, m) for n, m in layers if not any(n.startswith(o + ".") for o, _ in layers if o != n)]
    for name, layer in top:
        if hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(merge=merge, safe_merge=False, adapter_names=None)
        else:
            if merge:
                layer.merge()
            base = layer.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, base)
    return module


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with its peft adapters switched off inside the block (the base weights alone), on again after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield module
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def set_lora_scale(module: nn.Module, scale: float) -> int:
    """Set every peft LoRA layer of ``module`` to ``scale`` times its trained scaling (``alpha / rank``): 0 is
    the base model, 1 the trained adapter. Returns the number of layers changed (0 once merged/unloaded)."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in module.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        for adapter in list(layer.scaling):
            layer.set_scale(adapter, scale)
    return len(layers)
