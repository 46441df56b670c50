"""Controller-LoRA training: teach DA-CLIP new degradations cheaply (CLIP locked, LoRA on the controller).

Objective (the reference's): InfoNCE between content features and caption text features, plus a
degradation term. ``loss: reference`` uses InfoNCE between degradation features and the batch's
degradation-word features; ``loss: label_aware`` (default) uses cross-entropy over the *set* of
degradation words, because a batch holds many identical words, which InfoNCE treats as negatives.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import Dataset

from ...clip.factory import get_tokenizer, load_daclip
from ...clip.lora import add_controller_lora, save_controller_lora
from ...clip.loss import daclip_loss
from ...data.datasets import Captioned, block_items, block_pairs, degradation_groups
from ...data.images import read_image, to_uint8
from ..engine import TrainTask
from ..evaluation import degradation_accuracy, write_degradation_report

logger = logging.getLogger(__name__)

__all__ = ["ControllerTrainer", "DegradationImages", "build_classification_set", "daclip_loss",
           "evaluate_controller"]


class DegradationImages(Dataset):
    """Images with a degradation label (and caption tokens), through an open_clip transform."""

    def __init__(self, items: Sequence[Captioned], classes: Sequence[str], transform, tokenizer=None):
        self.items, self.transform, self.tokenizer = list(items), transform, tokenizer
        self.index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({it.degradation for it in self.items} - set(self.index))
        if unknown:
            raise ValueError(f"images carry degradations outside the label set {list(classes)}: {unknown}")
        self.has_captions = all(it.caption for it in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, object]:
        it = self.items[i]
        image = self.transform(Image.fromarray(to_uint8(read_image(it.image))))
        sample = {"image_clip": image, "label": self.index[it.degradation], "degradation": it.degradation}
        if self.tokenizer is not None:
            caption = it.caption if self.has_captions else ""
            sample["text"] = torch.cat([self.tokenizer([caption])[0], self.tokenizer([it.degradation])[0]])
        return sample


def _items(ds, distortion: Sequence[str]) -> List[Captioned]:
    if ds.mode == "CSV":
        return block_items(ds)
    if ds.mode == "MD":
        return [Captioned(p.lq, "", p.degradation) for p in block_pairs(ds, distortion)]
    raise ValueError(f"controller training reads CSV or MD datasets, got mode {ds.mode!r} "
                     f"(datasets.{ds.phase}); use the DA-CLIP CSV or a UIR MD tree")


def build_classification_set(ds, classes: Sequence[str], distortion: Sequence[str] = (), train: bool = False,
                             tokenizer=None, image_size: Union[int, Tuple[int, int]] = 224) -> DegradationImages:
    """Images of a CSV/MD dataset block with the reference's transforms (train: random resized crop 0.9-1) at
    ``image_size`` (the model's: ``DaCLIP.image_size``)."""
    import open_clip

    transform = open_clip.image_transform(image_size, is_train=train, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD,
                                          aug_cfg={"scale": (0.9, 1.0)} if train else None)
    return DegradationImages(_items(ds, distortion), classes, transform, tokenizer)


def _daclip(opt, adapter: Optional[str] = None):
    """The DA-CLIP of ``opt.daclip`` (pretrained or seeded random), with an adapter merged in if given."""
    return load_daclip(opt.daclip.model, opt.daclip.pretrained, adapter or opt.daclip.adapter,
                       seed=opt.train.manual_seed if opt.train else 0)


class ControllerTrainer(TrainTask):
    """``task: controller``: LoRA on the DA-CLIP controller."""

    def __init__(self, opt, data: bool = True):
        """``data=False`` builds the model only (``export``: no dataset is read)."""
        self.opt = opt
        c = opt.controller
        with torch.random.fork_rng():  # LoRA initialisation draws from the RNG: make it a function of the seed
            torch.manual_seed(opt.train.manual_seed)
            self.model = _daclip(opt)
            self.report = add_controller_lora(self.model, c.lora, zero_modules=c.zero_modules,
                                              train_logit_scale=c.train_logit_scale)
        if opt.runtime.gradient_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.tokenizer = get_tokenizer(opt.daclip.model)
        if data:
            self._build_datasets(opt)

    def _build_datasets(self, opt) -> None:
        self.train_block = next(d for d in opt.datasets.values() if d.phase == "train")
        self.val_blocks = [d for d in opt.datasets.values() if d.phase == "val"]
        self.classes = list(opt.distortion) or sorted({it.degradation for it in _items(self.train_block, ())})
        size = self.model.image_size
        self._train = build_classification_set(self.train_block, self.classes, opt.distortion, train=True,
                                               tokenizer=self.tokenizer, image_size=size)
        self.use_captions = self._train.has_captions
        if not self.use_captions:
            logger.info("no captions in the training data: training the degradation term only")
        self._val = [build_classification_set(d, self.classes, opt.distortion, image_size=size)
                     for d in self.val_blocks]
        self.class_text: Optional[torch.Tensor] = None

    def sampling_groups(self) -> Optional[List[List[int]]]:
        return degradation_groups(self.train_block, [it.degradation for it in self._train.items])

    def composition(self) -> Dict[str, Dict[str, int]]:
        from collections import Counter

        sets = {"train": self._train, **{b.name or b.phase: d for b, d in zip(self.val_blocks, self._val)}}
        return {k: dict(Counter(it.degradation for it in d.items)) for k, d in sets.items()}

    def setup(self, accelerator) -> None:
        self.model.to(accelerator.device)
        with torch.no_grad():  # CLIP is locked: the vocabulary's text features are constants
            self.class_text = self.model.encode_text(self.tokenizer(self.classes).to(accelerator.device),
                                                     normalize=True)

    def train_dataset(self) -> Dataset:
        return self._train

    def training_step(self, model, batch) -> Dict[str, torch.Tensor]:
        kind = self.opt.controller.loss
        if self.use_captions:
            out = model(image=batch["image_clip"], text=batch["text"])
        else:
            out = model(image=batch["image_clip"])
            if kind == "reference":
                with torch.no_grad():
                    degra_tokens = batch["text"][:, batch["text"].shape[1] // 2:]
                    out["text_degra_features"] = self.model.encode_text(degra_tokens, normalize=True)
        return daclip_loss(out, kind, labels=batch["label"], class_text=self.class_text,
                           caption_weight=self.opt.controller.caption_weight)

    best_metric = "accuracy"  # the mean over the validation sets

    def validate(self, step: int, out_dir: Path) -> Dict[str, float]:
        metrics = {}
        for block, ds in zip(self.val_blocks, self._val):
            report = degradation_accuracy(self.model, self.tokenizer, ds, self.classes)
            metrics[f"acc_{block.name or block.phase}"] = report["overall"]
        if metrics:
            metrics["accuracy"] = float(sum(metrics.values()) / len(metrics))
        return metrics

    def export(self, out_dir: Path) -> Path:
        """The controller-LoRA folder of the current weights."""
        return save_controller_lora(self.model, Path(out_dir), model_name=self.opt.daclip.model)

    def save_outputs(self, out_dir: Path) -> None:
        path = self.export(Path(out_dir) / "controller_lora")
        logger.info("controller LoRA saved to %s", path)


def evaluate_controller(opt, adapter: Optional[str] = None) -> Dict[str, Dict]:
    """``daclip-lora test`` for ``task: controller``: accuracy per test dataset, written under results."""
    model = _daclip(opt, adapter)
    tokenizer = get_tokenizer(opt.daclip.model)
    results = {}
    for key, block in opt.datasets.items():
        classes = list(opt.distortion) or sorted({it.degradation for it in _items(block, ())})
        images = build_classification_set(block, classes, opt.distortion, image_size=model.image_size)
        report = degradation_accuracy(model, tokenizer, images, classes)
        write_degradation_report(report, Path(opt.path.results_root), prefix=f"{key}_degradation")
        results[key] = report
    return results
