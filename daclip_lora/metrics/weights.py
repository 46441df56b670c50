"""Metric weights without a network: where pyiqa looks for them, and one line when one is missing.

pyiqa downloads a metric's weights on first use into torch's hub folder (``<hub>/pyiqa``); the backbones it
builds on come from torchvision (``<hub>/checkpoints``), OpenAI CLIP (``<hub>/clip``) or timm (the Hugging Face
cache). :func:`weights_guard` wraps those download calls while a metric is created: with downloads off
(``HF_HUB_OFFLINE=1`` or ``DACLIP_LORA_OFFLINE=1``) or when a download fails, the metric fails with one
:class:`MissingMetricWeights` line naming the metric, the missing file, the folder it is looked for in and how to
put it there. ``weights_dir`` points the hub folder elsewhere for the duration (``--weights-dir``).

We patch the download functions rather than pre-listing files per metric so that pyiqa's own code decides what
it needs (any metric, any pyiqa version).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

__all__ = ["MissingMetricWeights", "downloads_disabled", "hub_dir", "no_downloads", "weights_guard"]

_TRUE = ("1", "true", "yes", "on")


class MissingMetricWeights(FileNotFoundError):
    """A metric's weight file is neither on disk nor downloadable (the message says which and where)."""


def downloads_disabled() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``DACLIP_LORA_OFFLINE`` is set: no download is even tried."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "DACLIP_LORA_OFFLINE"))


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Inside this block no metric weight is downloaded (``DACLIP_LORA_OFFLINE=1``): cached files only."""
    old = os.environ.get("DACLIP_LORA_OFFLINE")
    os.environ["DACLIP_LORA_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DACLIP_LORA_OFFLINE", None)
        else:
            os.environ["DACLIP_LORA_OFFLINE"] = old


def hub_dir() -> Path:
    """torch's hub folder (``$TORCH_HOME/hub``), under which pyiqa keeps ``pyiqa/`` and torchvision ``checkpoints/``."""
    import torch.hub

    return Path(torch.hub.get_dir())


def _missing(metric: str, url: str, target: Union[str, Path], cause: Optional[BaseException]) -> MissingMetricWeights:
    target = Path(target)
    why = "downloads are off (HF_HUB_OFFLINE/DACLIP_LORA_OFFLINE)" if cause is None else \
        f"the download failed ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})"
    return MissingMetricWeights(
        f"metric {metric!r} needs {target.name}, which is not in {target.parent} and {why}: fetch {url} into that "
        f"folder, or pass --weights-dir DIR holding {target.parent.relative_to(hub_dir()) if _under_hub(target) else '.'}"
        f"/{target.name}")


def _under_hub(path: Path) -> bool:
    try:
        path.relative_to(hub_dir())
        return True
    except ValueError:
        return False


def _wrap_download(original, metric: str):
    """``download_url_to_file(url, dst, ...)`` that raises :class:`MissingMetricWeights` instead of going out
    (downloads off) or of failing with a network error."""
    def download(url, dst, *args, **kwargs):
        if downloads_disabled():
            raise _missing(metric, url, dst, None)
        try:
            return original(url, dst, *args, **kwargs)
        except Exception as exc:  # any network or HTTP failure
            raise _missing(metric, url, dst, exc) from exc
    return download


def _wrap_clip_download(original, metric: str):
    """pyiqa's OpenAI-CLIP ``_download(url, root)`` (urllib, not torch.hub), guarded the same way."""
    def download(url, root, *args, **kwargs):
        target = Path(root) / os.path.basename(urlparse(url).path)
        if downloads_disabled() and not target.is_file():
            raise _missing(metric, url, target, None)
        try:
            return original(url, root, *args, **kwargs)
        except Exception as exc:
            raise _missing(metric, url, target, exc) from exc
    return download


def _wrap_hf_download(original, metric: str):
    """timm's ``hf_hub_download(repo_id, filename, ...)`` (backbones such as MANIQA's ViT), guarded the same way."""
    def download(repo_id, filename, *args, **kwargs):
        from huggingface_hub import constants, try_to_load_from_cache

        def missing(why: str) -> MissingMetricWeights:
            return MissingMetricWeights(
                f"metric {metric!r} needs {filename} of the Hugging Face repo {repo_id}, which is not in the hub "
                f"cache {constants.HF_HUB_CACHE} and {why}: run once with network (HF_HUB_OFFLINE unset), or copy "
                f"that cache folder from a machine that has it")
        if downloads_disabled():  # the variable as it is now, not as huggingface_hub read it at import
            cached = try_to_load_from_cache(repo_id, filename, revision=kwargs.get("revision"))
            if isinstance(cached, str):
                return cached
            raise missing("downloads are off (HF_HUB_OFFLINE/DACLIP_LORA_OFFLINE)")
        try:
            return original(repo_id, filename, *args, **kwargs)
        except Exception as exc:  # network errors, LocalEntryNotFoundError
            raise missing(f"the download failed ({type(exc).__name__})") from exc
    return download


class _StdoutToLog:
    """pyiqa prints ("Downloading ...", "Loading pretrained model ..."); library code logs instead."""

    def write(self, text: str) -> int:
        if text.strip():
            logger.debug("pyiqa: %s", text.strip())
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def weights_guard(metric: str, weights_dir: Optional[Union[str, Path]] = None) -> Iterator[None]:
    """Create metric ``metric`` inside this block: missing weights become one :class:`MissingMetricWeights` line.

    Args:
        metric: our metric name (for the message).
        weights_dir: use this folder as torch's hub folder (pyiqa files in ``DIR/pyiqa``, torchvision's in
            ``DIR/checkpoints``, CLIP's in ``DIR/clip``) instead of ``$TORCH_HOME/hub``.
    """
    import torch.hub
    import pyiqa.archs.clip_model as clip_model
    import pyiqa.utils.download_util as download_util
    import timm.models._hub as timm_hub

    old_hub = torch.hub.get_dir()
    with contextlib.ExitStack() as stack:
        if weights_dir is not None:
            torch.hub.set_dir(str(weights_dir))
            stack.callback(torch.hub.set_dir, old_hub)
            # pyiqa reads its cache folder once at import; point it at the new hub folder too
            stack.enter_context(_patched(download_util, "DEFAULT_CACHE_DIR", os.path.join(str(weights_dir), "pyiqa")))
        stack.enter_context(_patched(download_util, "download_url_to_file",
                                     _wrap_download(download_util.download_url_to_file, metric)))
        stack.enter_context(_patched(torch.hub, "download_url_to_file",
                                     _wrap_download(torch.hub.download_url_to_file, metric)))
        stack.enter_context(_patched(clip_model, "_download", _wrap_clip_download(clip_model._download, metric)))
        stack.enter_context(_patched(timm_hub, "hf_hub_download", _wrap_hf_download(timm_hub.hf_hub_download, metric)))
        stack.enter_context(contextlib.redirect_stdout(_StdoutToLog()))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # pyiqa's `pretrained=`
        pyiqa_logger = logging.getLogger("pyiqa")  # "Network [X] is created." at INFO on its own handler
        stack.callback(pyiqa_logger.setLevel, pyiqa_logger.level)
        pyiqa_logger.setLevel(logging.WARNING)
        yield
