"""How well can any latent-space restorer do on the shipped tiny VAE? Ceilings of a decoded output, per degradation.

For every GT image of a split: the PSNR of the LQ, of the VAE's reconstruction ``D(E(GT))`` (what a UNet trained
to regress the latent ``E(GT)`` aims at), and of ``D(z*)`` with ``z*`` optimised against the GT itself (Adam on the
latent, from ``E(GT)``: an estimate from below of the best the decoder can output, whatever the UNet or encoder
feeds it).

    python bench/vae_ceiling.py runs/demo/data/val --steps 150
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def _load(root: Path):
    from daclip_lora.data.images import read_image

    gts, lqs, labels = [], [], []
    for folder in sorted(p for p in root.iterdir() if (p / "GT").is_dir()):
        for path in sorted((folder / "GT").glob("*.png")):
            gts.append(read_image(path))
            lqs.append(read_image(folder / "LQ" / path.name))
            labels.append(folder.name)
    if not gts:
        raise FileNotFoundError(f"no <degradation>/GT/*.png under {root}; pass a split folder of make-dataset")
    as_tensor = lambda ims: torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float()  # noqa: E731
    return as_tensor(gts), as_tensor(lqs), labels


def _psnr(x: torch.Tensor, gt: torch.Tensor) -> list:
    """Per-image PSNR (dB) of the clamped ``x`` against ``gt``."""
    from daclip_lora._utils.image_metrics import batch_psnr

    return [batch_psnr(a[None].clamp(0, 1), b[None]) for a, b in zip(x, gt)]


def main() -> None:
    from daclip_lora.restoration.backbone import SDBackbone
    from daclip_lora.tiny.locate import embedded_sd_base

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("split", type=Path, help="a split folder: <degradation>/GT and <degradation>/LQ")
    ap.add_argument("--steps", type=int, default=150, help="Adam steps on the latent")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backbone = SDBackbone.load(embedded_sd_base())
    backbone.vae.requires_grad_(False)
    gt, lq, labels = _load(args.split)
    with torch.no_grad():
        z0 = backbone.encode_latents(gt)
        reconstruction = backbone.decode_latents(z0)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=args.lr)
    for _ in range(args.steps):  # mean per-image log-MSE: mean PSNR
        loss = (backbone.decode(z) - gt).pow(2).mean((1, 2, 3)).log().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        best = backbone.decode_latents(z)
    rows: dict = {}
    for name, values in (("lq", _psnr(lq, gt)), ("vae_reconstruction", _psnr(reconstruction, gt)),
                         ("optimised_latent", _psnr(best, gt))):
        for label, v in zip(labels, values):
            rows.setdefault(label, {}).setdefault(name, []).append(v)
    table = {d: {k: round(float(np.mean(v)), 2) for k, v in r.items()} for d, r in rows.items()}
    table["mean"] = {k: round(float(np.mean([np.mean(r[k]) for r in rows.values()])), 2)
                     for k in next(iter(rows.values()))}
    print(f"{len(labels)} images of {args.split}; PSNR (dB), mean per degradation; "
          f"latent optimised for {args.steps} steps")
    print("| degradation | LQ | D(E(GT)) | D(z*) |\n|---|---|---|---|")
    for d, r in table.items():
        print(f"| {d} | {r['lq']:.2f} | {r['vae_reconstruction']:.2f} | {r['optimised_latent']:.2f} |")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
