"""The UNet-alone ablation: what the restoration UNet does without the fusion head, and how much it uses DA-CLIP
(its own embeddings against another degradation's), read by the demo and ``bench/bench_ablation.py``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..._utils.image_metrics import psnr
from ...restoration.pipeline import RestorationPipeline

__all__ = ["unet_alone_report"]


@torch.no_grad()
def unet_alone_report(pipe: RestorationPipeline, dataset, n: Optional[int] = None, fusion: bool = False,
                      batch: int = 16) -> Dict[str, Any]:
    """What the UNet does without the fusion head, and how much it uses DA-CLIP, on the first ``n`` samples.

    Each image is restored without the head twice: with its own DA-CLIP embeddings, and with those of the
    image at the same position in the *next* degradation's list (a wrong degradation, similar content when the
    splits are crops of the same photographs). Returns mean PSNRs (``lq``, ``unet``, ``unet_wrong_embedding``),
    ``unet_degradations_improved`` and per-degradation means. ``fusion=True`` measures the same with the fusion
    head (the keys keep their names). Same-sized images are restored ``batch`` at a time.
    """
    n = len(dataset) if n is None else min(n, len(dataset))
    samples = [dataset[i] for i in range(n)]
    pairs = _wrong_degradation_pairs(samples)
    embeddings = _report_embeddings(pipe, samples, batch)
    per: Dict[str, Dict[str, List[float]]] = {}
    wrong = dict(pairs)
    for chunk in _same_size_chunks(samples, [i for i, _ in pairs], batch):
        lq = torch.stack([samples[i]["LQ"] for i in chunk])
        outs = {}
        for key, sources in (("unet", chunk), ("unet_wrong_embedding", [wrong[i] for i in chunk])):
            emb = tuple(torch.stack([embeddings[j][part] for j in sources]) for part in (0, 1))
            outs[key] = pipe(lq, steps=1, fusion=fusion, embeddings=emb)
        _score_chunk(per, samples, chunk, outs)
    return _summarise_report(per)


def _summarise_report(per: Dict[str, Dict[str, List[float]]]) -> Dict[str, Any]:
    """Mean PSNRs over all images, per-degradation means and how many degradations the UNet improves."""
    table = {d: {k: float(np.mean(v)) for k, v in m.items()} for d, m in sorted(per.items())}
    mean = {k: float(np.mean([x for m in per.values() for x in m[k]])) for k in ("lq", "unet", "unet_wrong_embedding")}
    return {**mean, "unet_degradations_improved": sum(t["unet"] > t["lq"] for t in table.values()),
            "per_degradation": table}


def _report_embeddings(pipe: RestorationPipeline, samples: List[Dict[str, Any]], batch: int
                       ) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
    """DA-CLIP's (content, degradation) embeddings of every sample's LQ, ``batch`` same-sized images at a time."""
    embeddings: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    for chunk in _same_size_chunks(samples, list(range(len(samples))), batch):
        lq = torch.stack([samples[i]["LQ"] for i in chunk]).to(pipe.device)
        image_emb, degra_emb = (e.float() for e in pipe.daclip_embeddings(lq))
        embeddings.update({i: (image_emb[k], degra_emb[k]) for k, i in enumerate(chunk)})
    return embeddings


def _score_chunk(per: Dict[str, Dict[str, List[float]]], samples: List[Dict[str, Any]], chunk: List[int],
                 outs: Dict[str, torch.Tensor]) -> None:
    """Append the PSNRs of the LQ and of each output in ``outs`` to ``per[degradation]``."""
    for k, i in enumerate(chunk):
        s, gt = samples[i], samples[i]["GT"].permute(1, 2, 0).numpy()
        scores = per.setdefault(s["degradation"] or "all", {"lq": [], "unet": [], "unet_wrong_embedding": []})
        scores["lq"].append(psnr(s["LQ"].permute(1, 2, 0).numpy(), gt))
        for key, out in outs.items():
            scores[key].append(psnr(out[k].permute(1, 2, 0).numpy(), gt))


def _same_size_chunks(samples: List[Dict[str, Any]], indices: List[int], size: int) -> List[List[int]]:
    """``indices`` cut into runs of at most ``size`` consecutive samples whose LQ images have one shape."""
    chunks: List[List[int]] = []
    for i in indices:
        if chunks and len(chunks[-1]) < size and samples[chunks[-1][0]]["LQ"].shape == samples[i]["LQ"].shape:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _wrong_degradation_pairs(samples: List[Dict[str, Any]]) -> List[Tuple[int, int]]:
    """``(i, j)`` for every sample ``i``: ``j`` is the sample at the same position in the next degradation's list
    (cyclically, in sorted order of the degradation names)."""
    order = sorted({s["degradation"] or "all" for s in samples})
    groups = {d: [i for i, s in enumerate(samples) if (s["degradation"] or "all") == d] for d in order}
    pairs = []
    for k, d in enumerate(order):
        other = groups[order[(k + 1) % len(order)]]
        pairs.extend((i, other[p % len(other)]) for p, i in enumerate(groups[d]))
    return sorted(pairs)
