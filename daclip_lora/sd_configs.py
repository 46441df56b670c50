"""UNet architectures of Stable Diffusion 1.5 and 2.1 (diffusers configs), for counting without weights."""

from __future__ import annotations

from typing import Dict

import torch

__all__ = ["UNET_CONFIGS", "VAE_CONFIG", "count_restoration_parameters"]

_SD_COMMON = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
UNET_CONFIGS: Dict[str, dict] = {
    "sd15": dict(_SD_COMMON, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sd21": dict(_SD_COMMON, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True),
}

#: Stable Diffusion 1.x/2.x VAE (AutoencoderKL) architecture.
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                  block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512)


def count_restoration_parameters(name: str, rank: int = 8, embed_dim: int = 512, num_tokens: int = 4) -> Dict[str, int]:
    """Parameter counts of the restoration model on a real SD UNet, built on the meta device."""
    from diffusers import UNet2DConditionModel

    from .conditioning import RestorationConfig, RestorationUNet, add_unet_lora

    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet config {name!r}; available: {', '.join(UNET_CONFIGS)}")
    cfg = UNET_CONFIGS[name]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
        unet_params = sum(p.numel() for p in unet.parameters())
        config = RestorationConfig(base=name, daclip_model="daclip_ViT-B-32", embed_dim=embed_dim,
                                   cross_attention_dim=cfg["cross_attention_dim"], num_tokens=num_tokens,
                                   lora={"rank": rank, "alpha": rank})
        model = RestorationUNet(unet, config)
        add_unet_lora(model.unet, config.lora)
    named = dict(model.named_parameters())
    return {"unet": unet_params,
            "lora": sum(p.numel() for n, p in named.items() if "lora_" in n),
            "projector": sum(p.numel() for n, p in named.items() if n.startswith("conditioner.")),
            "conv_in_new": sum(p.numel() for n, p in named.items() if n == "unet.conv_in.lq.weight")}
