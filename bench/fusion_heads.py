"""The fusion head's versions (and the one-decode head) refitted side by side on one demo model's decodes.

The UNet, its decodes and the DA-CLIP embeddings are computed once from a finished demo (its restoration folder,
data and options); then each head version is fitted as the trainer fits it (:func:`fit_fusion_head` on the
training subset plus the calibration split) for every fit seed, versions interleaved, and scored on both held-out
splits (``val``: new crops of the training photographs; ``test``: new photographs). Scores are float PSNRs of
the clamped outputs of the unmerged model (the demo's report reads 8-bit images of the merged pipeline, so its
figures differ a little)::

    python bench/fusion_heads.py --demo runs/demo --seeds 0 1 2

Prints a Markdown table (mean over seeds, with the range) and writes ``fusion_heads.json`` next to the demo.
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path
from typing import Dict, List

import torch

from daclip_lora._utils.image_metrics import batch_psnr
from daclip_lora.restoration.fusion import FusionHead, fit_fusion_head, fusion_fit_data
from daclip_lora.restoration.serialization import load_restoration
from daclip_lora.training.options import load_options
from daclip_lora.training.tasks.restoration import RestorationTrainer, restoration_dataset

KEYS = ("lq", "decoded", "decoded_lq", "gt", "degra_emb")


def trained_demo(demo: Path) -> RestorationTrainer:
    """The demo's restoration trainer with its saved weights loaded (eval mode, on the CPU)."""
    opt = load_options(str(demo / "options" / "demo_restoration_train.yml"), is_train=True)
    trainer = RestorationTrainer(opt)
    load_restoration(trainer.model, demo / "runs" / "experiments" / opt.name / "models" / "restoration",
                     text_encoder=trainer.backbone.text_encoder)
    trainer.setup(types.SimpleNamespace(device=torch.device("cpu"), mixed_precision="no"))
    trainer.model.eval()
    return trainer


@torch.no_grad()
def split_decodes(trainer: RestorationTrainer, demo: Path, split: str) -> Dict[str, object]:
    """LQ, GT, ``D(z)`` (the UNet alone), ``D(z_LQ)`` and embeddings of every image of a held-out split."""
    opt = load_options(str(demo / "options" / "demo_restoration_test.yml"), is_train=False)
    pipe = trainer.pipeline()
    dataset = restoration_dataset(opt.datasets[split], opt.distortion, train=False, clip_size=pipe.daclip.image_size)
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in KEYS}
    degradations = []
    for i in range(len(dataset)):
        sample = dataset[i]
        lq = sample["LQ"][None]
        _, degra_emb = pipe.daclip_embeddings(lq)
        values = (lq, pipe(lq, steps=1, fusion=False), pipe.decode_latents(pipe.encode_latents(lq)),
                  sample["GT"][None], degra_emb)
        for key, value in zip(KEYS, values):
            parts[key].append(value.float())
        degradations.append(sample["degradation"])
    return {**{k: torch.cat(v) for k, v in parts.items()}, "degradations": degradations}


@torch.no_grad()
def score(head: FusionHead, data: Dict[str, object]) -> Dict[str, float]:
    """Mean PSNR of the head's output and how many degradations it lifts above their LQ."""
    out = head(*(data[k] for k in ("lq", "decoded", "decoded_lq", "degra_emb"))).clamp(0, 1)
    values = [batch_psnr(o[None], g[None]) for o, g in zip(out, data["gt"])]
    gains: Dict[str, List[float]] = {}
    for deg, a, x, g in zip(data["degradations"], values, data["lq"], data["gt"]):
        gains.setdefault(deg, []).append(a - batch_psnr(x[None], g[None]))
    return {"psnr": sum(values) / len(values), "improved": sum(sum(g) / len(g) > 0 for g in gains.values())}


#: the compared heads: whether each reads ``D(z_LQ)``; the one-decode head uses the LQ in its place
HEADS = {"two decodes": True, "one decode": False}


def fit(decoded_lq: bool, seed: int, data: Dict[str, torch.Tensor], embed_dim: int) -> FusionHead:
    torch.manual_seed(seed)  # the head's initialisation; the fit's batch order follows ``seed`` too
    head = FusionHead(embed_dim, decoded_lq=decoded_lq)
    fit_fusion_head(head, fusion_fit_data(head, *(data[k] for k in KEYS)), seed=seed)
    return head


def table(results: Dict[str, Dict[int, Dict[str, Dict[str, float]]]]) -> str:
    def cell(runs, split):
        values = [r[split]["psnr"] for r in runs]
        return (f"{sum(values) / len(values):.2f} ({min(values):.2f}-{max(values):.2f})",
                "/".join(str(r[split]["improved"]) for r in runs))

    lines = ["| head | new crops: PSNR (seeds: mean (min-max)) | improved | new photographs | improved |",
             "|---|---|---|---|---|"]
    for name, by_seed in results.items():
        runs = list(by_seed.values())
        lines.append("| " + " | ".join([name, *cell(runs, "val"), *cell(runs, "test")]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished `daclip-lora demo --out` folder")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trainer = trained_demo(args.demo)
    trainer.seed, trainer.step = trainer.opt.train.manual_seed, 0
    batches = list(trainer.fusion_batches())
    fit_data = {k: torch.cat([b[k].float().cpu() for b in batches]) for k in batches[0]}
    splits = {split: split_decodes(trainer, args.demo, split) for split in ("val", "test")}
    embed_dim = fit_data["degra_emb"].shape[1]
    results: Dict[str, Dict[int, Dict[str, Dict[str, float]]]] = {}
    for seed in args.seeds:
        for name, decoded_lq in HEADS.items():  # interleaved: every head at each seed
            head = fit(decoded_lq, seed, fit_data, embed_dim)
            results.setdefault(name, {})[seed] = {s: score(head, d) for s, d in splits.items()}
            print(f"seed {seed} {name}: {results[name][seed]}", flush=True)
    print(table(results))
    (args.demo / "fusion_heads.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
