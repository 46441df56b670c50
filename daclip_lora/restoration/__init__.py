"""Degradation-aware Stable Diffusion restoration: the SD backbone adapter, diffusion maths, the conditioned UNet
(:mod:`.model`), the fusion head, LoRA attach, folder format (:mod:`.serialization`), schedulers, tiling and the
inference pipeline. Imports :mod:`daclip_lora.clip`, :mod:`daclip_lora.data` and :mod:`daclip_lora._utils`."""
