"""``daclip-lora app``: a web page that shows what the restorer does to one image.

DA-CLIP's own ``app.py`` takes one image and returns one image (CUDA only, no controls). This page adds
what a researcher shows a colleague: DA-CLIP's predicted degradation (zero-shot probabilities over the
degradation words, as a bar chart), the restored image as a before/after slider, the sampling controls
(steps, scheduler, guidance, strength, seed, tiling), a progress bar, a PNG download, and the shipped
example photographs degraded on the fly with any of the ten synthetic degradations.

The logic lives in :class:`Restorer` and the small functions below (no Gradio needed, unit-tested);
:func:`build_app` only lays out the page (Gradio is imported there: ``pip install -e ".[app]"``).
Every user error (corrupt upload, oversized image, missing weights) becomes a message in the page.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._utils.compat import MissingExtraError

logger = logging.getLogger(__name__)

__all__ = ["Restorer", "AppSettings", "MissingExtraError", "require_gradio", "build_app", "example_image", "degraded_example", "read_upload",
           "resolve_weights", "DEFAULT_MAX_PIXELS", "EXAMPLE_SIZE", "API_NAME"]

#: Largest upload the app restores by default (pixels): 1024 x 1024. ``--max-pixels`` changes it.
DEFAULT_MAX_PIXELS = 1024 * 1024
#: Side of the shipped example crops (pixels, taken at the photographs' native scale).
EXAMPLE_SIZE = 128
#: The endpoint name for ``gradio_client``: ``Client(url).predict(..., api_name="/restore")``.
API_NAME = "restore"

#: bounds of the page's and the API's numbers: what the pipeline accepts (seed: a torch generator's 64-bit range,
#: kept to 32 bits as numpy's and most UIs' seeds are; steps: the 1000 training timesteps of SD schedulers)
LIMITS = {"steps": (1, 1000), "guidance": (0.0, 30.0), "strength": (0.01, 1.0), "seed": (0, 2 ** 32 - 1),
          "tile": (0, 4096), "lora_scale": (0.0, 4.0)}
#: how long uploads, previews and results stay on disk (seconds), and how often the sweep runs
DEFAULT_CACHE_SECONDS = 3600


def default_upload_mb(max_pixels: int) -> float:
    """The upload size cap for ``max_pixels``: 8 bytes a pixel (16-bit RGBA, uncompressed), at least 1 MB."""
    return max(1.0, round(8 * max_pixels / 2 ** 20, 1))
NO_DEGRADATION = "none (clean)"


def require_gradio() -> None:
    """Raise :class:`MissingExtraError` unless Gradio is importable."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise MissingExtraError('the web app needs Gradio, which is not installed: pip install -e ".[app]" '
                                '(with -c constraints.txt on a CPU machine)')


# ------------------------------------------------------------------------------ inputs
def example_names() -> List[str]:
    """The scikit-image photographs the page offers as examples, first the held-out ones that no shipped model
    trained on (:data:`~daclip_lora.data.synthetic.HELD_OUT_IMAGES`)."""
    from ..data.synthetic import BUILTIN_IMAGES, HELD_OUT_IMAGES

    return list(HELD_OUT_IMAGES) + [n for n in BUILTIN_IMAGES if n not in HELD_OUT_IMAGES]


def example_image(name: str, size: int = EXAMPLE_SIZE) -> np.ndarray:
    """A centre crop (``size`` px, native scale) of a shipped scikit-image photograph, float RGB in [0, 1].

    Raises:
        ValueError: ``name`` is not one of :func:`example_names`.
    """
    from ..data.synthetic import builtin_images

    names = example_names()
    if name not in names:
        raise ValueError(f"unknown example image {name!r}; choose one of {', '.join(names)}")
    image = next(img for n, img, _ in builtin_images() if n == name)
    h, w = image.shape[:2]
    s = min(size, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return np.ascontiguousarray(image[top:top + s, left:left + s])


def degraded_example(name: str, degradation: str, seed: int = 0, size: int = EXAMPLE_SIZE) -> np.ndarray:
    """:func:`example_image` with one synthetic degradation applied (``"none (clean)"`` or ``None``: as is)."""
    from ..data.degrade import degrade

    image = example_image(name, size)
    if not degradation or degradation == NO_DEGRADATION:
        return image
    return np.clip(degrade(image, degradation, seed=seed), 0, 1).astype(np.float32)


def is_url(value: Any) -> bool:
    """Whether an input names a URL (``scheme://...``) rather than a file: the page takes files only."""
    import re

    return bool(value) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(value)) is not None


def read_upload(path: Union[str, Path, None], max_pixels: int = DEFAULT_MAX_PIXELS,
                max_mb: Optional[float] = None) -> np.ndarray:
    """Decode an uploaded file as float RGB in [0, 1], refusing URLs, files above ``max_mb``, corrupt files and
    images above ``max_pixels``.

    Raises:
        ValueError: nothing uploaded, a URL, a file that is not a readable image, or one that is too large (the
            message says what was received and what to do).
    """
    from ..data.images import ImageError, ImageTooLarge, read_image

    if path is None or str(path) == "":
        raise ValueError("no image: upload one, or pick an example and press 'Use example'")
    if is_url(path):
        raise ValueError(f"{str(path)[:80]} is a URL; the app takes uploaded files only (download it, then upload)")
    name = Path(path).name
    size_mb = Path(path).stat().st_size / 2 ** 20 if Path(path).is_file() else 0.0
    if max_mb is not None and size_mb > max_mb:
        raise ValueError(f"{name} is {size_mb:.1f} MB, above this app's upload limit of {max_mb:.1f} MB; "
                         f"compress it, or start the app with --max-upload-mb {int(size_mb) + 1}")
    try:
        return read_image(path, max_pixels=max_pixels)
    except ImageTooLarge as e:
        raise ValueError(f"{name} is {e.width}x{e.height} = {e.width * e.height / 1e6:.1f} Mpx, above this app's "
                         f"limit of {max_pixels / 1e6:.1f} Mpx; downscale it, or start the app with --max-pixels "
                         f"{e.width * e.height}") from None
    except (ImageError, OSError):
        raise ValueError(f"{name} is not a readable image (corrupt or not an image file); upload a PNG, JPEG, "
                         f"WebP, BMP or TIFF") from None


# ------------------------------------------------------------------------------ models
def resolve_weights(weights: Union[str, Path]) -> Path:
    """The restoration folder behind ``weights``
    (:func:`~daclip_lora.restoration.locate.find_restoration_folder`).

    Raises:
        FileNotFoundError: no restoration folder there (the message says what was expected).
    """
    from ..restoration.locate import find_restoration_folder

    return find_restoration_folder(weights)


@dataclass
class AppSettings:
    """Where the models come from and the app's limits.

    ``weights`` / ``options`` unset: the embedded tiny models shipped with the package.
    """

    weights: Optional[str] = None
    options: Optional[str] = None
    base: Optional[str] = None
    daclip_pretrained: Optional[str] = None
    degradations: Optional[List[str]] = None
    device: Optional[str] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: upload cap in MB (``None``: :func:`default_upload_mb` of ``max_pixels``)
    max_upload_mb: Optional[float] = None
    #: uploads, previews and results older than this are deleted (seconds)
    cache_seconds: int = DEFAULT_CACHE_SECONDS

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_upload_mb is None:
            self.max_upload_mb = default_upload_mb(self.max_pixels)
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.cache_seconds < 60:
            raise ValueError(f"cache_seconds must be >= 60 (results must outlive a request), got "
                             f"{self.cache_seconds}")


class Restorer:
    """The restoration pipeline plus DA-CLIP zero-shot degradation probabilities, for one page."""

    def __init__(self, pipeline: Any, degradations: Sequence[str], source: str = ""):
        from ..restoration.zero_shot import DegradationReader

        self.pipeline = pipeline
        self.degradations = list(degradations)
        if not self.degradations:
            raise ValueError("the app needs at least one degradation word for DA-CLIP's probabilities")
        self.source = source
        self._lock = threading.Lock()  # one sampling run at a time: the models are shared
        self._probabilities = DegradationReader(pipeline.daclip, pipeline.config.daclip_model,
                                                self.degradations).words

    @classmethod
    def load(cls, settings: AppSettings) -> "Restorer":
        """Build from :class:`AppSettings` (embedded tiny models when neither weights nor options are set).

        Raises:
            FileNotFoundError / ValueError: missing or unfit weights, with what to pass instead.
        """
        from ..data.degrade import DEGRADATION_FUNCTIONS
        from ..restoration.pipeline import RestorationPipeline

        words = settings.degradations
        base, daclip, adapter = settings.base, settings.daclip_pretrained, None
        if settings.options:
            from ..training.options import load_options

            opt = load_options(settings.options, is_train=False)
            if opt.task != "restoration":
                raise ValueError(f"{settings.options} is a task: {opt.task} options file; the app needs a "
                                 f"restoration test file (task: restoration)")
            folder = Path(settings.weights) if settings.weights else \
                Path(opt.path.root) / "experiments" / opt.name / "models" / "restoration"
            folder = resolve_weights(folder)
            base, daclip, adapter = base or opt.sd.base, daclip or opt.daclip.pretrained, opt.daclip.adapter
            words = words or list(opt.distortion)
            source = f"{settings.options} ({folder})"
        elif settings.weights:
            folder = resolve_weights(settings.weights)
            source = str(folder)
        else:
            from ..tiny.locate import embedded_restorer

            folder = embedded_restorer()
            source = f"embedded tiny models ({folder.parent})"
        # unmerged: the page's LoRA-scale slider changes the LoRA's strength per request
        pipe = RestorationPipeline.from_pretrained(folder, base=base, daclip_pretrained=daclip,
                                                   daclip_adapter=adapter, device=settings.device, merge_lora=False)
        return cls(pipe, words or list(DEGRADATION_FUNCTIONS), source)

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> Dict[str, float]:
        """DA-CLIP's zero-shot degradation probabilities of ``image`` (``(H, W, 3)`` in [0, 1]); they sum to 1."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        _, degra = self.pipeline.daclip_embeddings(x)
        return self._probabilities.as_dicts(self._probabilities.from_embeddings(degra))[0]

    @torch.no_grad()
    def restore(self, image: np.ndarray, steps: int = 20, scheduler: str = "ddim", guidance_scale: float = 1.0,
                strength: float = 1.0, seed: int = 0, tile_size: Optional[int] = None,
                callback: Optional[Callable[[int, int], None]] = None, lora_scale: float = 1.0,
                color_fix: str = "none") -> np.ndarray:
        """Restore ``image`` (``(H, W, 3)`` in [0, 1]); returns the same shape. Arguments as the pipeline's
        (``lora_scale``: :meth:`~daclip_lora.restoration.pipeline.RestorationPipeline.set_lora_scale`)."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        with self._lock:
            self.pipeline.set_lora_scale(float(lora_scale))
            out = self.pipeline(x, steps=int(steps), scheduler=scheduler, guidance_scale=float(guidance_scale),
                                strength=float(strength), seed=int(seed), tile_size=tile_size, callback=callback,
                                color_fix=color_fix)
        return out[0].permute(1, 2, 0).cpu().numpy()


def _tile_argument(tile: Any) -> Optional[int]:
    """The page's tiling control: ``"auto"`` (above the base's native size), ``"off"`` or a pixel side."""
    if tile in (None, "", "auto"):
        return None
    if tile == "off":
        return 0
    try:
        value = int(tile)
    except (TypeError, ValueError):
        raise ValueError(f"tile size must be 'auto', 'off' or a number of pixels, got {tile!r}") from None
    low, high = LIMITS["tile"]
    if not low <= value <= high:
        raise ValueError(f"tile size must be 0 (off) to {high} pixels, got {value}")
    return value


def bounded(name: str, value: Any, kind: type = float) -> Any:
    """``value`` as ``kind`` if within ``LIMITS[name]``; else a ``ValueError`` naming it, its range and the value."""
    low, high = LIMITS[name]
    what = "a whole number" if kind is int else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what} in [{low}, {high}], got {value!r}") from None
    if not low <= number <= high or (kind is int and number != int(number)):
        raise ValueError(f"{name} must be {what} in [{low}, {high}], got {value!r}")
    return kind(number)


def check_request(steps: Any, guidance: Any, strength: Any, seed: Any) -> Tuple[int, float, float, int]:
    """The page's and the API's sampling numbers, each checked by :func:`bounded`."""
    return (bounded("steps", steps, int), bounded("guidance", guidance), bounded("strength", strength),
            bounded("seed", seed, int))


# ------------------------------------------------------------------------------ the page
class _Session:
    """Loads the models once (in the background at start), and runs the page's requests."""

    def __init__(self, settings: AppSettings, loader: Optional[Callable[[AppSettings], Restorer]] = None):
        self.settings = settings
        self._loader = loader or Restorer.load
        self._restorer: Optional[Restorer] = None
        self._error: Optional[str] = None
        self._done = threading.Event()
        self._out_dir = Path(tempfile.mkdtemp(prefix="daclip_lora_app_"))
        atexit.register(self.close)
        threading.Thread(target=self._load, daemon=True).start()

    def close(self) -> None:
        """Remove the app's output folder (at exit, or when the page is closed)."""
        shutil.rmtree(self._out_dir, ignore_errors=True)

    def sweep(self, now: Optional[float] = None) -> int:
        """Delete output files older than ``settings.cache_seconds`` (and folders left empty); the number of files
        removed."""
        cutoff = (time.time() if now is None else now) - self.settings.cache_seconds
        old = [f for f in self._out_dir.rglob("*") if f.is_file() and f.stat().st_mtime < cutoff]
        for f in old:
            f.unlink(missing_ok=True)
        for folder in sorted((d for d in self._out_dir.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
        return len(old)

    def _load(self) -> None:
        try:
            self._restorer = self._loader(self.settings)
            logger.info("app models: %s", self._restorer.source)
        except (ValueError, FileNotFoundError, OSError) as e:
            self._error = f"The models could not be loaded: {e}"
            logger.error("%s", self._error)
        finally:
            self._done.set()

    def restorer(self) -> Restorer:
        self._done.wait()
        if self._restorer is None:
            raise ValueError(self._error or "the models could not be loaded")
        return self._restorer

    def status(self) -> str:
        self._done.wait()
        if self._restorer is None:
            return f"**Error.** {self._error}"
        r = self._restorer
        return (f"Models: {r.source} on {r.pipeline.device}. Degradation words: {', '.join(r.degradations)}. "
                f"Largest upload: {self.settings.max_pixels / 1e6:.1f} Mpx and {self.settings.max_upload_mb:.1f} "
                f"MB; files are deleted after {self.settings.cache_seconds // 60} minutes.")

    def use_example(self, name: str, degradation: str, seed: float) -> str:
        from ..data.images import write_image

        seed = bounded("seed", seed, int)
        image = degraded_example(name, degradation, seed)
        tag = degradation.replace(" ", "_").replace("(", "").replace(")", "")
        return str(write_image(self._out_dir / "examples" / f"{name}_{tag}_{seed}.png", image))

    def preview(self, path: str) -> str:
        """Check an upload and return a PNG of it for the page (a ``ValueError`` says what is wrong)."""
        from ..data.images import write_image

        image = read_upload(path, self.settings.max_pixels, self.settings.max_upload_mb)
        return str(write_image(self._out_dir / "previews" / f"{Path(path).stem}.png", image))

    def run(self, path: Optional[str], steps: float, scheduler: str, guidance: float, strength: float,
            seed: float, tile: Any, progress: Optional[Callable[..., Any]] = None, lora_scale: float = 1.0,
            color_fix: str = "none") -> Tuple[Dict[str, float], Tuple[str, str], str, str]:
        """One request: probabilities, (LQ, restored) PNG paths, the restored PNG, and a details JSON string."""
        from ..data.images import write_image
        from ..restoration.color_fix import COLOR_FIXES

        steps, guidance, strength, seed = check_request(steps, guidance, strength, seed)
        lora_scale = bounded("lora_scale", lora_scale)
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"colour fix must be one of {', '.join(COLOR_FIXES)}, got {color_fix!r}")
        tile_size = _tile_argument(tile)
        self.sweep()
        image = read_upload(path, self.settings.max_pixels, self.settings.max_upload_mb)
        restorer = self.restorer()
        start = time.perf_counter()
        probs = restorer.probabilities(image)

        def callback(step: int, total: int) -> None:
            if progress is not None:
                progress((step, total), desc="denoising", unit="steps")

        restored = restorer.restore(image, steps=steps, scheduler=scheduler, guidance_scale=guidance,
                                    strength=strength, seed=seed, tile_size=tile_size, callback=callback,
                                    lora_scale=lora_scale, color_fix=color_fix)
        seconds = time.perf_counter() - start
        run = self._out_dir / f"{int(time.time() * 1000)}"
        stem = Path(path).stem
        lq_png = write_image(run / f"{stem}_input.png", image)
        out_png = write_image(run / f"{stem}_restored.png", restored)
        h, w = image.shape[:2]
        details = {"width": w, "height": h, "predicted_degradation": max(probs, key=probs.get),
                   "probabilities": probs, "steps": steps, "scheduler": scheduler, "guidance_scale": guidance,
                   "strength": strength, "seed": seed, "tile": tile, "lora_scale": lora_scale,
                   "color_fix": color_fix, "seconds": round(seconds, 2),
                   "objective": restorer.pipeline.config.objective, "models": restorer.source}
        return probs, (str(lq_png), str(out_png)), str(out_png), json.dumps(details, indent=1)


def _handlers(session: "_Session", gr: Any) -> Tuple[Callable, Callable, Callable]:
    """The page's callbacks: user errors become Gradio error toasts with the package's one-line message."""

    def use_example(name, degradation, seed):
        try:
            return session.use_example(name, degradation, seed)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def show(path):
        if not path:
            return None
        try:
            return session.preview(path)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def run(path, steps, scheduler, guidance, strength, seed, tile, lora_scale, color_fix, progress=gr.Progress()):
        try:
            return session.run(path, steps, scheduler, guidance, strength, seed, tile, progress, lora_scale, color_fix)
        except (ValueError, FileNotFoundError) as e:
            raise gr.Error(str(e), print_exception=False) from None

    return use_example, show, run


def _input_column(gr: Any) -> Dict[str, Any]:
    from ..data.degrade import DEGRADATION_FUNCTIONS
    from ..data.synthetic import HELD_OUT_IMAGES

    # a File, not an Image: Gradio's Image decodes uploads itself and turns a corrupt file into an
    # opaque "could not preprocess" error; read_upload gives the reason in the page instead
    c = {"image": gr.File(label="Input image (LQ): upload", file_types=["image"], type="filepath",
                          elem_id="input-file"),
         "preview": gr.Image(label="Input", type="filepath", interactive=False, elem_id="input-preview", height=256)}
    with gr.Row():
        c["example"] = gr.Dropdown(example_names(), value=HELD_OUT_IMAGES[0], label=f"Example photograph "
                                   f"({', '.join(HELD_OUT_IMAGES)}: never trained on)")
        c["degradation"] = gr.Dropdown([NO_DEGRADATION, *DEGRADATION_FUNCTIONS], value="noisy",
                                       label="Degrade it with")
        c["example_seed"] = gr.Number(0, precision=0, label="Degradation seed", minimum=LIMITS["seed"][0],
                                      maximum=LIMITS["seed"][1])
    c["use"] = gr.Button("Use example", elem_id="use-example")
    c["restore"] = gr.Button("Restore", variant="primary", elem_id="restore")
    return c


def _sampling_controls(gr: Any) -> List[Any]:
    """Steps, scheduler, guidance, strength, seed, tile, LoRA scale, colour fix: the order of the page's ``run``."""
    from ..restoration.color_fix import COLOR_FIXES
    from ..restoration.schedulers import SCHEDULERS

    with gr.Accordion("Sampling", open=True):
        gr.Markdown("Steps, scheduler, strength and seed apply to models trained with the diffusion "
                    "objective; a one-step model (such as the shipped tiny restorer) restores in one "
                    "UNet call and ignores them.")
        return [gr.Slider(1, 100, value=20, step=1, label="Steps"),
                gr.Dropdown(list(SCHEDULERS), value="ddim", label="Scheduler"),
                gr.Slider(1.0, 10.0, value=1.0, step=0.5, label="Guidance scale (1 = off)"),
                gr.Slider(0.05, 1.0, value=0.4, step=0.05, label="Strength (< 1 starts from the noised LQ)"),
                gr.Number(0, precision=0, label="Seed", minimum=LIMITS["seed"][0], maximum=LIMITS["seed"][1]),
                gr.Dropdown(["auto", "off", "64", "128", "256", "512", "768"], value="auto",
                            allow_custom_value=True, label="Tile size (px)"),
                gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA scale (0 = fidelity: about the input; "
                                                                  "1 = as trained)", elem_id="lora-scale"),
                gr.Dropdown(list(COLOR_FIXES), value="none", label="Colour fix (auto: not for low light, haze, "
                                                                   "shadow, rain)", elem_id="color-fix")]


def _output_column(gr: Any, settings: AppSettings) -> List[Any]:
    """Probabilities, before/after slider, download, details: the order of :meth:`_Session.run`'s outputs."""
    from ..data.degrade import DEGRADATION_FUNCTIONS

    probs = gr.Label(num_top_classes=len(settings.degradations or DEGRADATION_FUNCTIONS),
                     label="DA-CLIP: predicted degradation", elem_id="probabilities")
    compare = gr.ImageSlider(label="Before / after", type="filepath", elem_id="compare")
    download = gr.File(label="Restored image (PNG)", elem_id="download")
    with gr.Accordion("Details (JSON)", open=False):
        details = gr.Code(language="json", label="details", elem_id="details")
    return [probs, compare, download, details]


def _files_only(component: Any, gr: Any) -> None:
    """Refuse URL inputs before Gradio fetches them (its fetch resolves the host name first): the component's
    cache-moving methods, which receive every input path, raise for a URL. An instance attribute, so the stock
    ``gr.File`` and its front-end stay as they are."""
    for name in ("async_move_resource_to_block_cache", "move_resource_to_block_cache"):
        original = getattr(component, name)

        def guarded(path: Any, *args: Any, _original: Callable = original, **kwargs: Any) -> Any:
            if is_url(path):
                raise gr.Error(f"{str(path)[:80]} is a URL; the app takes uploaded files only (download it, "
                               f"then upload)", print_exception=False)
            return _original(path, *args, **kwargs)

        if name.startswith("async"):
            async def guarded_async(path: Any, *args: Any, _guard: Callable = guarded, **kwargs: Any) -> Any:
                result = _guard(path, *args, **kwargs)
                return await result
            setattr(component, name, guarded_async)
        else:
            setattr(component, name, guarded)


def build_app(settings: Optional[AppSettings] = None,
              loader: Optional[Callable[[AppSettings], Restorer]] = None) -> Any:
    """The Gradio page (a ``gr.Blocks``) for ``settings``; ``loader`` replaces :meth:`Restorer.load` (tests)."""
    require_gradio()
    import gradio as gr

    settings = settings or AppSettings()
    session = _Session(settings, loader)
    use_example, show, run = _handlers(session, gr)
    cache = settings.cache_seconds  # Gradio's own upload cache: swept like the app's outputs
    with gr.Blocks(title="daclip-lora: degradation-aware restoration", analytics_enabled=False,
                   delete_cache=(max(60, cache // 4), cache)) as app:
        gr.Markdown("## daclip-lora: degradation-aware restoration\n"
                    "Upload an image (or degrade a shipped example), then **Restore**. DA-CLIP predicts the "
                    "degradation; the Stable Diffusion LoRA, conditioned on DA-CLIP's embeddings, restores.")
        status = gr.Markdown("Loading the models ...", elem_id="status")
        with gr.Row():
            with gr.Column():
                c = _input_column(gr)
                sampling = _sampling_controls(gr)
            with gr.Column():
                outputs = _output_column(gr, settings)
        c["use"].click(use_example, [c["example"], c["degradation"], c["example_seed"]], c["image"],
                       api_name="example")
        _files_only(c["image"], gr)
        c["image"].change(show, c["image"], c["preview"], api_name=False)
        c["restore"].click(run, [c["image"], *sampling], outputs, api_name=API_NAME, concurrency_limit=1)
        app.load(session.status, None, status, api_name=False)
    return app


def launch(settings: AppSettings, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True, loader: Optional[Callable[[AppSettings], Restorer]] = None) -> Any:
    """Build and serve the page (``share``: Gradio's public tunnel, off by default), uploads capped at
    ``settings.max_upload_mb`` by Gradio itself (the page shows its message) and again by :func:`read_upload`."""
    app = build_app(settings, loader)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
               show_error=True, quiet=not block, theme=local_theme(),
               max_file_size=int(settings.max_upload_mb * 2 ** 20))
    return app


def local_theme() -> Any:
    """Gradio's default theme with system fonts: the page fetches nothing from outside the server."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])
