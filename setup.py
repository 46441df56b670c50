import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="daclip_lora",
    version=re.search(r'^__version__ = "([^"]+)"', (HERE / "daclip_lora" / "_utils" / "version.py").read_text(), re.M)[1],
    description="DA-CLIP as an open_clip plugin, with LoRA for its controller and for Stable Diffusion restoration",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["daclip_lora", "daclip_lora.*"]),
    # model configs (daclip_lora/clip/model_configs) and the tiny pretrained bases and web-app restorer
    # (daclip_lora/tiny/assets; daclip-lora make-tiny-base [--daclip | --restorer])
    package_data={"daclip_lora.clip": ["model_configs/*.json"], "daclip_lora.tiny": ["assets/**/*"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "open_clip_torch>=3.0,<4",
        "timm>=1.0",
        "peft>=0.17",
        "diffusers>=0.30",
        "transformers>=4.40",
        "accelerate>=0.30",
        "safetensors>=0.4",
        "pyyaml>=6.0",
        "tqdm",
        "Pillow",
        "pypng",  # 16-bit PNGs, which Pillow decodes to 8 bits (data/deep_files.py)
        "tifffile",  # 16-bit TIFFs (also scikit-image's TIFF codec)
        "tensorboard",  # logger.use_tb_logger (through accelerate's trackers)
        "scikit-image>=0.21",
        "numpy",
        "packaging",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "setuptools>=70.1"],  # -n auto: every core; setuptools: the wheel test
        # the web app (daclip-lora app) and its browser test (Selenium drives Debian's chromium/chromedriver)
        "app": ["gradio>=5.0,<7", "gradio_client", "selenium>=4.10"],
        # image-quality metrics and perceptual losses (daclip-lora evaluate, sd.loss lpips/dists); pyiqa's CLIP
        # dependency (openai-clip) imports pkg_resources, which setuptools 81 removed
        "metrics": ["pyiqa>=0.1.13", "setuptools<81"],
    },
    entry_points={"console_scripts": ["daclip-lora=daclip_lora.apps.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
