"""Tiled processing with smooth blending, for restoring images larger than the model's native size.

:func:`tiled_map` applies a function to overlapping tiles of a ``(B, C, H, W)`` tensor and blends the
outputs with Gaussian weights (largest at a tile's centre, never zero, so every position is covered
and seams fade out). It serves three jobs with one code path: the VAE encoder (pixels -> latents,
``scale = 1/f``), the VAE decoder (latents -> pixels, ``scale = f``) and the UNet at *every* denoising
step (latents -> noise prediction, ``scale = 1``), as in MultiDiffusion (Bar-Tal et al. 2023) and the
tiled samplers of StableSR/DiffBIR. An input that fits in one tile is passed through whole, so tiled
and whole restoration are identical there. Peak activation memory depends on the tile size and
``tile_batch``, not on the image size; only the output and its weight sum are image-sized.

Known limit (shared with other tiled VAEs): GroupNorm statistics are computed per tile, so tiles of
very different content can differ slightly in tone; the overlap blending hides the seams.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

__all__ = ["tile_starts", "blend_weights", "tiled_map", "count_tiles"]


def tile_starts(size: int, tile: int, overlap: int, multiple: int = 1) -> List[int]:
    """Start offsets of tiles of ``tile`` covering ``[0, size)`` with at least ``overlap`` shared positions.

    Starts are multiples of ``multiple`` when ``size`` and ``tile`` are.
    """
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if size <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile size {tile}), got {overlap}")
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def count_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> int:
    th, tw = min(tile, height), min(tile, width)
    return len(tile_starts(height, th, overlap, multiple)) * len(tile_starts(width, tw, overlap, multiple))


def blend_weights(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(1, 1, H, W)`` Gaussian weights (sigma = side / 4), 1 at the centre, about 0.14 at the edges."""
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32)
        return torch.exp(-0.5 * ((x - (n - 1) / 2) / max(n / 4, 1e-6)) ** 2)

    w = axis(height)[:, None] * axis(width)[None, :]
    return w.to(device=device, dtype=dtype)[None, None]


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
              scale: float = 1.0, multiple: int = 1,
              tile_batch: int = 4) -> torch.Tensor:
    """``fn`` over overlapping ``tile`` x ``tile`` tiles of ``x``, blended into one output.

    Args:
        fn: maps ``(k * B, C, t, t)`` (``k`` tile positions stacked position-major) to
            ``(k * B, C_out, t * scale, t * scale)``.
        x: ``(B, C, H, W)``.
        tile, overlap: tile side and minimum overlap, in positions of ``x``.
        scale: output side / input side of ``fn`` (1/8 for an SD VAE encoder, 8 for its decoder).
        multiple: tile sides and starts are multiples of it (the VAE factor when encoding).
        tile_batch: tile positions per ``fn`` call.

    Returns:
        ``(B, C_out, H * scale, W * scale)``; exactly ``fn(x)`` when ``x`` fits in one tile.
    """
    b, _, height, width = x.shape
    tile = max(multiple, tile // multiple * multiple)
    if height <= tile and width <= tile:
        return fn(x)
    th, tw = min(tile, height), min(tile, width)
    boxes: List[Tuple[int, int]] = [(y, x0) for y in tile_starts(height, th, overlap, multiple)
                                    for x0 in tile_starts(width, tw, overlap, multiple)]
    oh, ow = round(th * scale), round(tw * scale)
    out: Optional[torch.Tensor] = None
    norm: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None
    for i in range(0, len(boxes), max(1, tile_batch)):
        chunk = boxes[i:i + max(1, tile_batch)]
        result = fn(torch.cat([x[:, :, y:y + th, x0:x0 + tw] for y, x0 in chunk]))
        if out is None:
            out = torch.zeros(b, result.shape[1], round(height * scale), round(width * scale),
                              device=result.device, dtype=torch.float32)
            norm = torch.zeros(1, 1, out.shape[2], out.shape[3], device=result.device, dtype=torch.float32)
            weights = blend_weights(oh, ow, result.device, torch.float32)
        for j, (y, x0) in enumerate(chunk):
            oy, ox = round(y * scale), round(x0 * scale)
            out[:, :, oy:oy + oh, ox:ox + ow] += result[j * b:(j + 1) * b].float() * weights
            norm[:, :, oy:oy + oh, ox:ox + ow] += weights
    return (out / norm).to(result.dtype)
