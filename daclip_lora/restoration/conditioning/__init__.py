"""How the conditions enter the UNet: one interface (:class:`ConditioningPath`), one registry (:data:`PATHS`), one
module per path."""

from .base import PATHS, Conditions, ConditioningPath, UNetCall

__all__ = ["PATHS", "Conditions", "ConditioningPath", "UNetCall", "conditioning_paths"]

# the built-in paths, imported on first use (PATHS.get)
for _name, _where in (("context_tokens", "context_tokens:ContextTokens"), ("lq_latent", "lq_latent:LQLatent"),
                      ("time_embedding", "time_embedding:TimeEmbedding"),
                      ("output_norm", "output_norm:OutputNorm"), ("modulated_lora", "modulated_lora:ModulatedLora")):
    if _name not in PATHS:
        PATHS.register(_name, f"{__name__}.{_where}")


def conditioning_paths(image_context: bool = True, degra_context: bool = True, num_tokens: int = 4,
                       lq_latent: bool = True, time_embedding: bool = False, modulated_lora: bool = False,
                       output_norm: bool = False, paths=None):
    """The ``{name: options}`` of the paths the ``sd.conditioning`` switches turn on, in build order, followed by
    ``paths`` (registered paths by name, with their options; for a path a switch already turned on, its options
    are merged over the switch's)."""
    out = {}
    if image_context or degra_context:
        out["context_tokens"] = {"image": bool(image_context), "degradation": bool(degra_context),
                                 "num_tokens": int(num_tokens)}
    for name, on in (("lq_latent", lq_latent), ("time_embedding", time_embedding), ("output_norm", output_norm),
                     ("modulated_lora", modulated_lora)):
        if on:
            out[name] = {}
    for name, options in (paths or {}).items():  # names are checked by RestorationConfig
        out[name] = {**out.get(name, {}), **(options or {})}  # a built-in's options override its switches'
    return out
