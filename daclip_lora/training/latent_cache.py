"""The latent cache on disk: what the frozen models make of each training sample, computed once and reused.

Each sample's tensors (VAE latents of GT and LQ, DA-CLIP's embeddings, ...) live in safetensors shards under
``<cache_dir>/<fingerprint>/``, the fingerprint naming the frozen models and the crop. A sample's key hashes its
files' paths, sizes and modification times and the crop parameters, so a changed file is computed again and an
unchanged one never is: later runs (and every process of a run) read what the first one wrote. The shards are
memory-mapped, so RAM does not grow with the dataset. One writer at a time: the main process of a run builds, the
others wait for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch.utils.data import Dataset

from .._utils.io import atomic_file

logger = logging.getLogger(__name__)

__all__ = ["LatentCache", "fingerprint", "sample_key"]

INDEX = "index.json"


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()


def fingerprint(*parts: Any) -> str:
    """The cache folder's name for what the tensors depend on besides the files (models, crop, sizes)."""
    return _digest(parts)[:16]


def sample_key(paths: Sequence[Path], *params: Any) -> str:
    """A sample's key: its files' resolved paths, sizes and modification times, and ``params`` (the crop)."""
    stats = []
    for p in paths:
        st = os.stat(p)
        stats += [Path(p).resolve(), st.st_size, st.st_mtime_ns]
    return _digest([*stats, *params])


class LatentCache(Dataset):
    """The cached tensors of ``keys`` (one per training sample, in dataset order) with each sample's label."""

    def __init__(self, folder: Path, keys: List[str], labels: List[str]):
        self.folder, self.keys, self.labels = Path(folder), keys, labels
        index = json.loads((self.folder / INDEX).read_text())
        missing = [k for k in keys if k not in index]
        if missing:
            raise FileNotFoundError(f"latent cache {self.folder} lacks {len(missing)} of {len(keys)} samples; it is "
                                    f"built by the run's main process (delete the folder to rebuild it)")
        self.shard_of = [index[k] for k in keys]
        self._open: Dict[str, Any] = {}

    @staticmethod
    def build(folder: Path, keys: List[str], compute: Callable[[List[int]], Dict[str, torch.Tensor]],
              batch: int = 16, progress: bool = True) -> int:
        """Compute and write the samples of ``keys`` the folder lacks (``compute(indices)`` gives their tensors,
        batched on the first dimension); returns how many were computed."""
        from safetensors.torch import save_file
        from tqdm import tqdm

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index_path = folder / INDEX
        index: Dict[str, str] = json.loads(index_path.read_text()) if index_path.is_file() else {}
        todo = [i for i, k in enumerate(keys) if k not in index]
        shard_no = len({*index.values()})
        for start in tqdm(range(0, len(todo), batch), desc="cache latents", unit="batch", disable=not progress or None):
            chunk = todo[start:start + batch]
            tensors = compute(chunk)
            name = f"shard-{shard_no:06d}.safetensors"
            out = {f"{keys[i]}/{field}": t[j].detach().float().contiguous().cpu()
                   for j, i in enumerate(chunk) for field, t in tensors.items()}
            with atomic_file(folder / name) as tmp:
                save_file(out, str(tmp))
            index.update({keys[i]: name for i in chunk})
            with atomic_file(index_path) as tmp:  # the shard first, then the index that names it
                tmp.write_text(json.dumps(index))
            shard_no += 1
        logger.info("latent cache %s: %d samples computed, %d reused", folder, len(todo), len(keys) - len(todo))
        return len(todo)

    def __len__(self) -> int:
        return len(self.keys)

    #: shard files kept open (memory-mapped) at once; the least recently read is closed beyond that, so the
    #: mapped pages a long run holds do not grow with the number of shards
    MAX_OPEN = 64

    def _shard(self, name: str) -> Any:
        handle = self._open.pop(name, None)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(self.folder / name), framework="pt")
            if len(self._open) >= self.MAX_OPEN:
                self._open.pop(next(iter(self._open)))  # dicts keep insertion order: the least recently read
        self._open[name] = handle  # (re)inserted last: the most recently read
        return handle

    def __getitem__(self, i: int) -> Dict[str, Any]:
        shard, prefix = self._shard(self.shard_of[i]), f"{self.keys[i]}/"
        out: Dict[str, Any] = {k[len(prefix):]: shard.get_tensor(k) for k in self._fields(shard, prefix)}
        out["degradation"] = self.labels[i]
        return out

    def _fields(self, shard: Any, prefix: str) -> List[str]:
        return [k for k in shard.keys() if k.startswith(prefix)]

    def take(self, indices: Sequence[int], fields: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``fields`` of the samples ``indices``, stacked."""
        rows = [self[i] for i in indices]
        return {f: torch.stack([r[f] for r in rows]) for f in fields}

    def __getstate__(self) -> Dict[str, Any]:  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}
