"""Which latent cache trains better when the training images are larger than the patch: one centre crop per
image, N random crops per image (``runtime.cache_crops: N``), or no cache (a fresh random crop every draw)?

    python bench/cache_crops.py                 # 128 px demo photographs, 64 px patches, the demo's recipe
    python bench/cache_crops.py --crops 1 4 16 --seed 0

Makes the demo's data with 128 px images (so a 64 px patch sees a quarter of each), trains the demo's restorer
(its preset, the shipped controller LoRA) once per variant on the same data, and evaluates each on both held-out
splits: with the fusion head, and the UNet alone. The other design, full-image latents cut into windows in latent
space (``--latent-crops``), is trained too, and what it feeds the UNet is measured: the latent window against
the window's own latent, both decoded against the pixels.
Prints one JSON line per variant and a Markdown table.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from daclip_lora.apps import demo
from daclip_lora.data.synthetic import make_dataset
from daclip_lora.tiny.locate import embedded_daclip_base, embedded_restorer


class _LatentCrops(torch.utils.data.Dataset):
    """The other design: full-image latents in the cache, ``n`` windows of ``side`` latent pixels cut from each,
    at offsets seeded by (seed, image, window); DA-CLIP's embeddings are the full image's."""

    def __init__(self, cache, n: int, side: int, seed: int):
        self.cache, self.n, self.side, self.seed = cache, n, side, seed
        self.labels = [label for label in cache.labels for _ in range(n)]

    def __len__(self) -> int:
        return len(self.cache) * self.n

    def __getitem__(self, sample: int) -> dict:
        image, window = divmod(sample, self.n)
        item = self.cache[image]
        h, w = item["z_gt"].shape[-2:]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + image * 101 + window)
        top, left = (int(torch.randint(0, m - self.side + 1, (1,), generator=g)) for m in (h, w))
        for key in ("z_gt", "z_lq"):
            item[key] = item[key][:, top:top + self.side, left:left + self.side]
        return item


def _latent_crop_trainer(n: int):
    """A RestorationTrainer whose cache holds full-image latents, cut into ``n`` latent windows per image."""
    import dataclasses

    from daclip_lora.training.latent_cache import LatentCache, fingerprint, sample_key
    from daclip_lora.training.tasks.restoration import RestorationTrainer, restoration_dataset

    class LatentCropTrainer(RestorationTrainer):
        def _build_cache(self, accelerator):
            full = restoration_dataset(dataclasses.replace(self.train_block, patch_size=None), self.opt.distortion,
                                       train=True, crop="center", clip_size=self.daclip.image_size)
            folder = Path(self.opt.runtime.cache_dir) / fingerprint("full-image", self.opt.daclip.adapter)
            keys = [sample_key([p.gt, p.lq], "full") for p in full.pairs]
            LatentCache.build(folder, keys, lambda idx: self.frozen_features(
                torch.utils.data.default_collate([full[i] for i in idx])))
            cache = LatentCache(folder, keys, [p.degradation for p in full.pairs])
            return _LatentCrops(cache, n, self.train_block.patch_size // self.backbone.vae_factor,
                                self.opt.train.manual_seed)

        def fusion_batches(self, size: int = 32):
            cached, self.cached = self.cached, None  # pixels and latents of the same seeded random crops
            try:
                yield from super().fusion_batches(size)
            finally:
                self.cached = cached

    return LatentCropTrainer


def _variant(out: Path, data: Path, degs: list, name: str, runtime: dict, seed: int) -> dict:
    from daclip_lora.training.engine import Engine
    from daclip_lora.training.options import load_options
    from daclip_lora.training.tasks.restoration import RestorationTrainer
    from daclip_lora.training.tasks.restoration_eval import evaluate_restoration

    run = out / name
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "data").exists():
        (run / "data").symlink_to(data)
    daclip = {"model": "daclip_tiny", "pretrained": str(embedded_daclip_base()),
              "adapter": str(embedded_restorer().parent / "controller_lora")}
    train_yml, test_yml = demo.restoration_options(run, "r", degs, daclip, "crops", seed)
    opt = yaml.safe_load(train_yml.read_text())
    runtime = dict(runtime)
    latent_crops = runtime.pop("latent_crops", 0)
    opt["runtime"].update(runtime, cache_dir=str(out / "cache"))
    train_yml.write_text(yaml.safe_dump(opt))
    start = time.perf_counter()
    o = load_options(train_yml, is_train=True, root=run / "runs")
    trainer_class = _latent_crop_trainer(latent_crops) if latent_crops else RestorationTrainer
    Engine(o, trainer_class(o)).fit()
    seconds = time.perf_counter() - start
    folder = Path(o.path.models) / "restoration"
    test = load_options(test_yml, is_train=False, root=run / "runs")
    report = evaluate_restoration(test, folder=str(folder))
    unet = demo._unet_alone_summary(test, folder, degs)
    row = {"name": name, "runtime": runtime, "latent_crops": latent_crops, "train_seconds": round(seconds, 1)}
    for split in ("val", "test"):
        mean = report[split]["mean"]
        row[split] = {"lq": round(mean["lq_psnr"], 2), "head": round(mean["psnr"], 2),
                      "unet": round(unet[split]["psnr_unet"], 2)}
    return row


@torch.no_grad()
def latent_crop_error(data: Path, patch: int = 64, n: int = 40) -> dict:
    """Full-image latents cropped in latent space against the latents of the pixel crop (the tiny SD's VAE)."""
    from daclip_lora.data.images import read_image
    from daclip_lora.restoration.backbone import SDBackbone
    from daclip_lora.tiny.locate import embedded_sd_base
    from daclip_lora._utils.image_metrics import psnr

    backbone = SDBackbone.load(embedded_sd_base())
    f = backbone.vae_factor
    every = sorted((data / "train").glob("*/GT/*.png"))
    paths = every[:: max(1, len(every) // n)]
    rel, p_crop, p_latent = [], [], []
    for path in paths[:n]:
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float()
        top = left = (image.shape[-1] - patch) // 2 // f * f  # on the latent grid
        crop = image[..., top:top + patch, left:left + patch]
        z_crop = backbone.encode_latents(crop)
        z_full = backbone.encode_latents(image)[..., top // f:(top + patch) // f, left // f:(left + patch) // f]
        rel.append(((z_full - z_crop).norm() / z_crop.norm()).item())
        target = crop[0].permute(1, 2, 0).numpy()
        for z, acc in ((z_crop, p_crop), (z_full, p_latent)):
            acc.append(psnr(backbone.decode(z)[0].clamp(0, 1).permute(1, 2, 0).numpy(), target))
    mean = lambda v: round(sum(v) / len(v), 2)  # noqa: E731
    return {"images": len(rel), "latent_relative_error": round(sum(rel) / len(rel), 3),
            "decoded_psnr_encoded_crop": mean(p_crop), "decoded_psnr_latent_crop": mean(p_latent)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cache_crops"))
    parser.add_argument("--crops", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--latent-crops", type=int, nargs="*", default=[16],
                        help="windows per image cut from full-image latents (the other design)")
    parser.add_argument("--no-uncached", action="store_true", help="skip the uncached random-crop variant")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    full = demo.DEMO_PRESETS["full"]
    demo.DEMO_PRESETS["crops"] = {**full, "patch": 64}
    data = (args.out / "data").resolve()
    if not (data / "dataset.json").exists():
        make_dataset(data, source="builtin", size=full["size"], val_size=full["val_size"],
                     calib_size=full["calib_size"], test_size=full["test_size"], patch_size=args.image_size,
                     seed=args.seed)
    degs = json.loads((data / "dataset.json").read_text())["distortions"]
    print(json.dumps({"latent_crop": latent_crop_error(data)}), flush=True)
    variants = [(f"cache_crops_{n}", {"cache": True, "cache_crops": n}) for n in args.crops]
    variants += [(f"latent_crops_{n}", {"cache": True, "cache_crops": n, "latent_crops": n}) for n in args.latent_crops]
    if not args.no_uncached:
        variants.append(("no_cache_random_crops", {"cache": False}))
    rows = []
    for name, runtime in variants:
        rows.append(_variant(args.out.resolve(), data, degs, name, runtime, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    print("| variant | new crops: head (UNet alone) | new photographs: head (UNet alone) | training s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['val']['head']:.2f} ({r['val']['unet']:.2f}) | {r['test']['head']:.2f} "
              f"({r['test']['unet']:.2f}) | {r['train_seconds']:.0f} |")
    print(f"LQ: {rows[0]['val']['lq']:.2f} / {rows[0]['test']['lq']:.2f}")


if __name__ == "__main__":
    main()
