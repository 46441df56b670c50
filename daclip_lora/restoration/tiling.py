"""Tiled processing with smooth blending, for restoring images larger than the model's native size.

:func:`tiled_map` applies a function to overlapping tiles of a ``(B, C, H, W)`` tensor and blends the
outputs with Gaussian weights (largest at a tile's centre, never zero, so every position is covered
and seams fade out). It serves three jobs with one code path: the VAE encoder (pixels -> latents,
``scale = 1/f``), the VAE decoder (latents -> pixels, ``scale = f``) and the UNet at *every* denoising
step (latents -> noise prediction, ``scale = 1``), as in MultiDiffusion (Bar-Tal et al. 2023) and the
tiled samplers of StableSR/DiffBIR. An input that fits in one tile is passed through whole, so tiled
and whole restoration are identical there. Peak activation memory depends on the tile size and
``tile_batch``, not on the image size; only the output and its weight sum are image-sized.

GroupNorm statistics. A GroupNorm normalises each tile by that tile's own mean and variance, so tiles of
different content come out in different tones: a regular grid at the tile stride and colour blotches, worst for
small bases whose norms have one channel per group (instance norms). With ``shared_norms`` (a module),
:func:`tiled_map` makes two passes, as the tiled VAEs widely used with Stable Diffusion do (multidiffusion-
upscaler's Tiled VAE, ComfyUI's): the first records every GroupNorm call's per-image group statistics over all
tiles, the second normalises every tile with those image-wide statistics (:class:`SharedGroupNorm`). The first
pass's deeper statistics are measured on per-tile-normalised inputs, so the result is close to, not equal to,
the whole-image one (tests/test_tiling.py bounds the difference).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SharedGroupNorm", "tile_starts", "blend_weights", "tiled_map", "count_tiles"]


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


class SharedGroupNorm:
    """Every ``nn.GroupNorm`` under ``root`` normalised with statistics shared by all tiles of each image.

    In :meth:`recording`, each GroupNorm call (the ``i``-th of one ``fn`` call, counted from :meth:`start`) works
    as usual and adds its input's per-image, per-group mean and variance (tiles stacked position-major, as
    :func:`tiled_map` stacks them) to an image-wide running estimate (Chan et al.'s parallel variance, in float64).
    In :meth:`applying`, the ``i``-th call normalises with that estimate instead of the tile's own statistics.
    """

    def __init__(self, root: nn.Module, batch: int):
        self.norms = [m for m in root.modules() if isinstance(m, nn.GroupNorm)]
        self.batch = batch
        self.stats: List[Tuple[torch.Tensor, torch.Tensor, float]] = []  # (mean, m2, count) per call, (B, G)
        self._call = 0
        self._apply = False

    def start(self) -> None:
        """Call before each ``fn`` call: GroupNorm calls are numbered from here."""
        self._call = 0

    @contextlib.contextmanager
    def _installed(self, apply: bool) -> Iterator[None]:
        self._apply = apply
        for m in self.norms:  # an instance attribute shadows nn.GroupNorm.forward; deleting it restores that
            m.forward = functools.partial(self._forward, m)
        try:
            yield
        finally:
            for m in self.norms:
                del m.forward

    def recording(self) -> contextlib.AbstractContextManager:
        return self._installed(apply=False)

    def applying(self) -> contextlib.AbstractContextManager:
        return self._installed(apply=True)

    def _grouped(self, m: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        """``(k, B, G, -1)``: tile positions, images, groups, values."""
        return x.reshape(x.shape[0] // self.batch, self.batch, m.num_groups, -1)

    def _record(self, m: nn.GroupNorm, x: torch.Tensor) -> None:
        g = self._grouped(m, x).float()
        var, mean = torch.var_mean(g, dim=3, unbiased=False)  # (k, B, G) per tile
        n = float(g.shape[3])
        # combine the k tiles, then with what earlier calls of this index saw
        mean_b, m2_b, count = mean.mean(0).double(), (var * n).sum(0).double(), n * g.shape[0]
        m2_b = m2_b + (n * (mean.double() - mean_b) ** 2).sum(0)
        if self._call == len(self.stats):
            self.stats.append((mean_b, m2_b, count))
            return
        mean_a, m2_a, count_a = self.stats[self._call]
        total = count_a + count
        delta = mean_b - mean_a
        self.stats[self._call] = (mean_a + delta * count / total, m2_a + m2_b + delta ** 2 * count_a * count / total,
                                  total)

    def _forward(self, m: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if not self._apply:
            self._record(m, x)
            self._call += 1
            return F.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)
        if self._call >= len(self.stats):
            raise RuntimeError("SharedGroupNorm: more GroupNorm calls than in the recording pass")
        mean, m2, count = self.stats[self._call]
        self._call += 1
        g = self._grouped(m, x)
        mean_t = mean.to(g.dtype)[None, :, :, None]
        inv = torch.rsqrt((m2 / count).to(g.dtype) + m.eps)[None, :, :, None]
        out = ((g - mean_t) * inv).reshape(x.shape)
        if m.affine:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            out = out * m.weight.view(shape) + m.bias.view(shape)
        return out


def _tile_boxes(height: int, width: int, th: int, tw: int, overlap: int, multiple: int) -> List[Tuple[int, int]]:
    return [(y, x0) for y in tile_starts(height, th, overlap, multiple) for x0 in tile_starts(width, tw, overlap,
                                                                                               multiple)]


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
              scale: float = 1.0, multiple: int = 1, tile_batch: int = 4,
              shared_norms: Optional[nn.Module] = None,
              on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """``fn`` over overlapping ``tile`` x ``tile`` tiles of ``x``, blended into one output.

    Args:
        fn: maps ``(k * B, C, t, t)`` (``k`` tile positions stacked position-major) to
            ``(k * B, C_out, t * scale, t * scale)``.
        x: ``(B, C, H, W)``.
        tile, overlap: tile side and minimum overlap, in positions of ``x``.
        scale: output side / input side of ``fn`` (1/8 for an SD VAE encoder, 8 for its decoder).
        multiple: tile sides and starts are multiples of it (the VAE factor when encoding).
        tile_batch: tile positions per ``fn`` call.
        shared_norms: normalise every GroupNorm under this module with statistics shared by all tiles of an
            image (two passes, see :class:`SharedGroupNorm`); ``None``: per tile, one pass.
        on_tile: called as ``on_tile(done, total)`` after each ``fn`` call (progress; two passes count twice).

    Returns:
        ``(B, C_out, H * scale, W * scale)``; exactly ``fn(x)`` when ``x`` fits in one tile.
    """
    b, _, height, width = x.shape
    tile = max(multiple, tile // multiple * multiple)
    if height <= tile and width <= tile:
        return fn(x)
    th, tw = min(tile, height), min(tile, width)
    boxes = _tile_boxes(height, width, th, tw, overlap, multiple)
    step = max(1, tile_batch)
    chunks = [boxes[i:i + step] for i in range(0, len(boxes), step)]
    calls = len(chunks) * (2 if shared_norms is not None else 1)
    counter = iter(range(1, calls + 1))

    def run(chunk: List[Tuple[int, int]]) -> torch.Tensor:
        result = fn(torch.cat([x[:, :, y:y + th, x0:x0 + tw] for y, x0 in chunk]))
        if on_tile is not None:
            on_tile(next(counter), calls)
        return result

    if shared_norms is None:
        return _blend(run, chunks, b, (height, width), (th, tw), scale)
    norms = SharedGroupNorm(shared_norms, b)
    with norms.recording():
        for chunk in chunks:
            norms.start()
            run(chunk)
    with norms.applying():
        def run_shared(chunk: List[Tuple[int, int]]) -> torch.Tensor:
            norms.start()
            return run(chunk)
        return _blend(run_shared, chunks, b, (height, width), (th, tw), scale)


def _blend(run: Callable[[List[Tuple[int, int]]], torch.Tensor], chunks: List[List[Tuple[int, int]]], b: int,
           size: Tuple[int, int], tile: Tuple[int, int], scale: float) -> torch.Tensor:
    """Run every chunk of tile positions and blend the outputs with Gaussian weights."""
    (height, width), (th, tw) = size, tile
    oh, ow = round(th * scale), round(tw * scale)
    out: Optional[torch.Tensor] = None
    norm: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None
    for chunk in chunks:
        result = run(chunk)
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
