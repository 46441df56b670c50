"""The Stable Diffusion architectures the package knows, in one table (diffusers configs): SD 1.5, 2.1 and SDXL (for
counting and benchmarking without weights) and the tiny ones (``tiny``, ``tiny_sd2``, ``tiny_sdxl``: the random
test bases of :func:`daclip_lora.tiny.sd.build_tiny_sd`, one per family; ``tiny_pretrained``: the shipped base of
:func:`daclip_lora.tiny.recipes.train_tiny_sd`)."""

from __future__ import annotations

from typing import Dict

import torch

__all__ = ["FULL_SIZE_FAMILIES", "SD_SCHEDULER", "TEXT_ENCODER_CONFIGS", "TINY_FAMILIES", "UNET_CONFIGS", "VAE_CONFIGS",
           "count_restoration_parameters"]

_SD_COMMON = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
UNET_CONFIGS: Dict[str, dict] = {
    "sd15": dict(_SD_COMMON, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    "sd21": dict(_SD_COMMON, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True),
    "tiny": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=32),
    "sdxl": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32),
    # SDXL's structure (two text encoders, pooled text and size conditions) at toy widths: the hidden states of
    # both tiny text encoders side by side (32 + 32), 6 time ids of 8 features plus the pooled 32
    "tiny_sdxl": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                      use_linear_projection=True, cross_attention_dim=64, addition_embed_type="text_time",
                      addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                      norm_num_groups=32),
    # SD 2.x's structure (linear projections, per-level heads) at toy widths; v-prediction in its scheduler
    "tiny_sd2": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                     attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32),
    "tiny_pretrained": dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32),
}

#: AutoencoderKL architectures: SD 1.x/2.x and the tiny ones.
VAE_CONFIGS: Dict[str, dict] = {
    "sd": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512),
    "tiny": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=64),
    "tiny_pretrained": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16, sample_size=64,
            mid_block_add_attention=False),
}
_CLIP_TEXT = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                  pad_token_id=49407)
#: CLIP text encoders (transformers ``CLIPTextConfig``): the tiny bases' (random and frozen: nothing here can
#: teach language) and the real ones' architectures: CLIP ViT-L/14 (SD 1.x, SDXL's first), OpenCLIP ViT-H/14
#: (SD 2.x, penultimate layer: 23 of 24) and OpenCLIP ViT-bigG/14 (SDXL's second, with projection)
TEXT_ENCODER_CONFIGS: Dict[str, dict] = {
    "tiny": dict(_CLIP_TEXT, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                 projection_dim=32),
    "clip_l": dict(_CLIP_TEXT, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                   num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu"),
    "openclip_h": dict(_CLIP_TEXT, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                       num_hidden_layers=23, projection_dim=1024, hidden_act="gelu"),
    "openclip_bigg": dict(_CLIP_TEXT, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                          num_hidden_layers=32, projection_dim=1280, hidden_act="gelu"),
}
#: the architectures :func:`daclip_lora.tiny.sd.build_tiny_sd` writes, per family: (UNet config, text encoder
#: config(s), scheduler class, prediction type, timestep spacing) for the tiny stand-in and for the real size;
#: ``sdxl`` has a second text encoder with projection
TINY_FAMILIES: Dict[str, tuple] = {
    "sd1": ("tiny", ("tiny",), "DDPMScheduler", "epsilon", "leading"),
    "sd2-v": ("tiny_sd2", ("tiny",), "DDPMScheduler", "v_prediction", "leading"),
    "sd-turbo": ("tiny_sd2", ("tiny",), "EulerDiscreteScheduler", "epsilon", "trailing"),
    "sdxl": ("tiny_sdxl", ("tiny", "tiny"), "EulerDiscreteScheduler", "epsilon", "leading"),
}
FULL_SIZE_FAMILIES: Dict[str, tuple] = {
    "sd1": ("sd15", ("clip_l",), "DDPMScheduler", "epsilon", "leading"),
    "sd2-v": ("sd21", ("openclip_h",), "DDPMScheduler", "v_prediction", "leading"),
    "sd-turbo": ("sd21", ("openclip_h",), "EulerDiscreteScheduler", "epsilon", "trailing"),
    "sdxl": ("sdxl", ("clip_l", "openclip_bigg"), "EulerDiscreteScheduler", "epsilon", "leading"),
}
#: SD 1.x's training scheduler (DDPMScheduler config).
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", clip_sample=False, steps_offset=1)


def count_restoration_parameters(name: str, rank: int = 8, embed_dim: int = 512, num_tokens: int = 4) -> Dict[str, int]:
    """Parameter counts of the restoration model on a real SD UNet, built on the meta device."""
    from diffusers import UNet2DConditionModel

    from .conditioning import conditioning_paths
    from .lora import add_restoration_lora
    from .model import RestorationConfig, RestorationUNet

    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet config {name!r}; available: {', '.join(UNET_CONFIGS)}")
    cfg = UNET_CONFIGS[name]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
        unet_params = sum(p.numel() for p in unet.parameters())
        config = RestorationConfig(base=name, daclip_model="daclip_ViT-B-32", embed_dim=embed_dim,
                                   cross_attention_dim=cfg["cross_attention_dim"],
                                   paths=conditioning_paths(num_tokens=num_tokens), lora={"rank": rank, "alpha": rank})
        model = RestorationUNet(unet, config)
        add_restoration_lora(model, config.lora)
    named = dict(model.named_parameters())
    return {"unet": unet_params,
            "lora": sum(p.numel() for n, p in named.items() if "lora_" in n),
            "projector": sum(p.numel() for n, p in named.items() if n.startswith("paths.context_tokens.")),
            "conv_in_new": sum(p.numel() for n, p in named.items() if n.startswith("paths.lq_latent."))}
