"""Trainers: only their step and batch logic; :mod:`daclip_lora.engine` runs them."""

from .controller import ControllerTrainer, build_classification_set, daclip_loss

__all__ = ["ControllerTrainer", "build_classification_set", "daclip_loss"]
