"""Plain text-to-image LoRA fine-tuning (``task: text2image``) on a caption folder.

UNet LoRA plus an optional text-encoder LoRA with its own learning rate; validation prompts are rendered
with diffusers' ``StableDiffusionPipeline`` and scored with CLIP score (``100 * max(cos, 0)``) using a
(DA-)CLIP model of the user's choice (``daclip.model``: a DA-CLIP name or any open_clip name). On resume
only the LoRA weights are loaded back and nothing else becomes trainable (the script users come from made
the whole text encoder trainable again after a resume).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from ...data.datasets import read_caption_folder
from ...data.images import read_image, to_uint8, write_image
from ...restoration.backbone import SDBackbone
from ...restoration.diffusion import diffusion_loss, diffusion_target
from ...restoration.lora import add_text_encoder_lora, add_unet_lora
from ..engine import TrainTask, per_sample_generators, per_sample_noise, per_sample_randint

logger = logging.getLogger(__name__)

__all__ = ["Text2ImageTrainer", "clip_score", "read_prompts"]


def read_prompts(path) -> List[str]:
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"validation prompts file {path} is empty; write one prompt per line")
    return prompts


class CaptionImages(Dataset):
    """Caption folder -> ``{"pixels": (3, R, R) in [-1, 1], "input_ids": (77,)}``; resize + centre crop."""

    def __init__(self, folder, tokenizer, resolution: int, use_flip: bool = False):
        self.items, self.tokenizer, self.resolution, self.use_flip = read_caption_folder(folder), tokenizer, \
            resolution, use_flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = self.items[i]
        img = Image.fromarray(to_uint8(read_image(item.image)))
        r = self.resolution
        scale = r / min(img.size)
        img = img.resize((max(r, round(img.width * scale)), max(r, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - r) // 2, (img.height - r) // 2
        arr = np.asarray(img.crop((left, top, left + r, top + r)), dtype=np.float32) / 255.0
        if self.use_flip and torch.randint(0, 2, ()).item():
            arr = arr[:, ::-1]
        pixels = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))) * 2 - 1
        ids = self.tokenizer(item.caption, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids[0]
        return {"pixels": pixels, "input_ids": ids}


class Text2ImageModel(nn.Module):
    """UNet (+LoRA) and text encoder (+optional LoRA), called through ``forward`` (DDP-friendly)."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, unet_kwargs: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.unet_kwargs = unet_kwargs or {}

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        context = self.text_encoder(input_ids)[0]
        return self.unet(noisy, timesteps, encoder_hidden_states=context, return_dict=False, **self.unet_kwargs)[0]


@torch.no_grad()
def clip_score(images: List[np.ndarray], prompts: List[str], model_name: str, pretrained: Optional[str] = None,
               device: str = "cpu") -> List[float]:
    """CLIP score ``100 * max(cos(image, text), 0)`` per (image, prompt), with a (DA-)CLIP model."""
    from ...clip.factory import create_model_and_transforms, get_tokenizer

    model, _, preprocess = create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    tokenizer = get_tokenizer(model_name)
    pixels = torch.stack([preprocess(Image.fromarray(to_uint8(im))) for im in images]).to(device)
    image_features = model.encode_image(pixels, normalize=True)
    text_features = model.encode_text(tokenizer(prompts).to(device), normalize=True)
    return (100 * (image_features * text_features).sum(-1).clamp(min=0)).tolist()


class Text2ImageTrainer(TrainTask):
    """``task: text2image``."""

    def __init__(self, opt, data: bool = True):
        """``data=False`` builds the model only (``export``: no dataset is read)."""
        self.opt = opt
        s = opt.sd
        if s.base is None:
            raise ValueError("sd.base is required: the path of a Stable Diffusion folder in diffusers format")
        self.backbone = SDBackbone.load(s.base)
        if self.backbone.family != "sd":
            raise ValueError(f"task text2image trains SD 1.x/2.x bases; sd.base {s.base} is {self.backbone.family} "
                             f"(use task: restoration, or diffusers' train_text_to_image_lora_sdxl.py)")
        self.sd = self.backbone.components
        self.train_block = next(d for d in opt.datasets.values() if d.phase == "train")
        if self.train_block.mode != "captions":
            raise ValueError(f"task text2image trains on a caption folder: set datasets.{self.train_block.phase}.mode "
                             f"to captions (got {self.train_block.mode})")
        vae_factor = self.backbone.vae_factor
        if s.resolution % vae_factor:
            raise ValueError(f"sd.resolution must be a multiple of {vae_factor}, got {s.resolution}")
        with torch.random.fork_rng():
            torch.manual_seed(opt.train.manual_seed)
            add_unet_lora(self.sd.unet, s.lora)
            if s.text_encoder_lora is not None:
                add_text_encoder_lora(self.sd.text_encoder, s.text_encoder_lora)
        self.model = Text2ImageModel(self.sd.unet, self.sd.text_encoder)
        if opt.runtime.gradient_checkpointing:
            self.sd.unet.enable_gradient_checkpointing()
        if data:
            self._train = CaptionImages(self.train_block.dataroot, self.sd.tokenizer, s.resolution,
                                        self.train_block.use_flip)
        self.prompts = read_prompts(s.validation_prompts) if s.validation_prompts else []

    def param_groups(self) -> Optional[List[Dict[str, Any]]]:
        unet = [(f"unet.{n}", p) for n, p in self.sd.unet.named_parameters() if p.requires_grad]
        text = [(f"text_encoder.{n}", p) for n, p in self.sd.text_encoder.named_parameters() if p.requires_grad]
        groups = [{"params": unet, "lr": self.opt.train.lr_G}]
        if text:
            groups.append({"params": text, "lr": self.opt.sd.text_encoder_lr or self.opt.train.lr_G})
        return groups

    def setup(self, accelerator) -> None:
        self.device = accelerator.device
        self.sd.vae.to(self.device)
        self.model.to(self.device)

    def train_dataset(self) -> Dataset:
        return self._train

    def training_step(self, model, batch) -> Dict[str, torch.Tensor]:
        sched, rt = self.sd.scheduler, self.opt.runtime
        latents = self.backbone.encode_latents((batch["pixels"].float() + 1) / 2).float()
        gens = per_sample_generators(self.seed, self.step, batch["_index"].tolist())
        noise = per_sample_noise(gens, latents.shape[1:], latents.device, rt.noise_offset)
        t = per_sample_randint(gens, sched.config.num_train_timesteps, latents.device)
        target = diffusion_target(sched, latents, noise, t)
        pred = model(sched.add_noise(latents, noise, t), t, batch["input_ids"])
        return {"loss": diffusion_loss(sched, pred, target, t, rt.snr_gamma)}

    best_metric = "clip_score"

    def composition(self) -> Dict[str, Dict[str, int]]:
        return {"train": {"captioned images": len(self._train)}}

    def validate(self, step: int, out_dir: Path) -> Dict[str, float]:
        if not self.prompts:
            return {}
        from diffusers import StableDiffusionPipeline

        from ...restoration.schedulers import make_scheduler

        pipe = StableDiffusionPipeline(vae=self.sd.vae, text_encoder=self.sd.text_encoder, tokenizer=self.sd.tokenizer,
                                       unet=self.sd.unet, scheduler=make_scheduler(self.opt.sampling.scheduler,
                                                                                   self.sd.scheduler),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        s, images = self.opt.sampling, []
        folder = Path(self.opt.path.val_images) / f"{step:08d}"
        for i, prompt in enumerate(self.prompts):
            gen = torch.Generator(device="cpu").manual_seed(s.seed + i)
            img = pipe(prompt, num_inference_steps=s.steps, guidance_scale=max(1.0, s.guidance_scale),
                       height=self.opt.sd.resolution, width=self.opt.sd.resolution, generator=gen,
                       output_type="np").images[0]
            write_image(folder / f"{i:03d}.png", img)
            images.append(img)
        metrics: Dict[str, float] = {}
        if self.opt.sd.clip_score:
            scores = clip_score(images, self.prompts, self.opt.daclip.model, self.opt.daclip.pretrained,
                                device=str(self.device))
            (folder / "clip_scores.json").write_text(json.dumps(dict(zip(self.prompts, scores)), indent=2))
            metrics["clip_score"] = float(np.mean(scores))
        return metrics

    def export(self, out_dir: Path) -> Path:
        """The diffusers LoRA folder of the current weights."""
        self.backbone.save_lora(Path(out_dir), self.sd.unet, self.sd.text_encoder)
        return Path(out_dir)

    def save_outputs(self, out_dir: Path) -> None:
        out = self.export(Path(out_dir) / "text2image_lora")
        logger.info("text-to-image LoRA saved to %s", out)

