"""The open_clip plugin: DA-CLIP model configs and registry, factories, the model, checkpoints, losses and the
controller LoRA. Imports only :mod:`daclip_lora._utils` below it."""
