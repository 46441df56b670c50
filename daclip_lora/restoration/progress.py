"""Progress over the tiles of one large image (every tiled VAE and UNet call), so a large restore shows it."""

from __future__ import annotations

from typing import Callable, Optional

from tqdm import tqdm

__all__ = ["TileProgress"]


class TileProgress:
    """One tqdm bar over the tiles of one image.

    :meth:`stage` returns an ``on_tile(done, total)`` callback for a stage that runs ``repeats`` tiled maps (the
    UNet: once per step); the bar's total grows by ``total * repeats`` when the stage's first tile is done.
    """

    def __init__(self, enabled: bool):
        self.bar = tqdm(total=0, desc="tiles", unit="tile", leave=False, disable=not enabled) if enabled else None

    def stage(self, repeats: int = 1) -> Optional[Callable[[int, int], None]]:
        if self.bar is None:
            return None
        counted = []

        def on_tile(done: int, total: int) -> None:
            if not counted:
                counted.append(True)
                self.bar.total += total * repeats
                self.bar.refresh()
            self.bar.update(1)
        return on_tile

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
