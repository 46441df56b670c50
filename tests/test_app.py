"""``daclip-lora app``: the page's functions (no Gradio needed), the Gradio API through gradio_client, and the
page itself driven in headless Chromium (Selenium + Debian's chromium/chromedriver)."""

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from daclip_lora.apps import web as webapp
from daclip_lora.apps.cli import main
from daclip_lora.data.degrade import DEGRADATION_FUNCTIONS
from daclip_lora.data.images import read_image, write_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def restorer():
    """The embedded tiny models the app starts with."""
    return webapp.Restorer.load(webapp.AppSettings(device="cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload(tmp_path, h=56, w=72, seed=0) -> Path:
    image = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    return write_image(tmp_path / "upload.png", image)


# --------------------------------------------------------------------------- functions
def test_example_image_is_a_native_scale_crop():
    image = webapp.example_image("astronaut")
    assert image.shape == (webapp.EXAMPLE_SIZE, webapp.EXAMPLE_SIZE, 3)
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1


def test_unknown_example_names_the_choices():
    with pytest.raises(ValueError, match="unknown example image 'astronot'.*astronaut"):
        webapp.example_image("astronot")


@pytest.mark.parametrize("degradation", list(DEGRADATION_FUNCTIONS))
def test_every_degradation_changes_the_example_deterministically(degradation):
    clean = webapp.degraded_example("camera", webapp.NO_DEGRADATION)
    a = webapp.degraded_example("camera", degradation, seed=3)
    b = webapp.degraded_example("camera", degradation, seed=3)
    assert a.shape == clean.shape
    assert np.abs(a - clean).mean() > 1e-3
    assert np.array_equal(a, b)


@pytest.mark.parametrize("content, match", [
    (b"\x89PNG\r\n\x1a\nnot really a png", "not a readable image"),
    (b"hello", "not a readable image"),
])
def test_corrupt_upload_is_one_clear_message(tmp_path, content, match):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        webapp.read_upload(path)


def test_oversized_upload_says_how_to_allow_it(tmp_path):
    path = _upload(tmp_path, 120, 100)
    with pytest.raises(ValueError, match=r"100x120 = 0.0 Mpx, above this app's limit.*--max-pixels 12000"):
        webapp.read_upload(path, max_pixels=5000)
    assert webapp.read_upload(path, max_pixels=12000).shape == (120, 100, 3)


def test_no_upload_says_what_to_do():
    with pytest.raises(ValueError, match="no image: upload one"):
        webapp.read_upload(None)


@pytest.mark.parametrize("tile, expected", [("auto", None), ("", None), ("off", 0), ("128", 128), (64, 64)])
def test_tile_control(tile, expected):
    assert webapp._tile_argument(tile) == expected


@pytest.mark.parametrize("tile", ["big", "-8"])
def test_bad_tile_control(tile):
    with pytest.raises(ValueError, match="tile size"):
        webapp._tile_argument(tile)


def test_resolve_weights_accepts_a_demo_folder(tmp_path):
    folder = tmp_path / "runs" / "restoration"
    folder.mkdir(parents=True)
    (folder / "restoration.json").write_text("{}")
    (tmp_path / "summary.json").write_text(json.dumps({"sd_lora": str(folder)}))
    assert webapp.resolve_weights(tmp_path) == folder
    assert webapp.resolve_weights(folder) == folder


def test_resolve_weights_missing_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no restoration weights at .*nowhere.*does not exist"):
        webapp.resolve_weights(tmp_path / "nowhere")


def test_probabilities_cover_the_ten_words_and_sum_to_one(restorer):
    probs = restorer.probabilities(webapp.degraded_example("astronaut", "noisy"))
    assert list(probs) == list(DEGRADATION_FUNCTIONS)
    assert abs(sum(probs.values()) - 1) < 1e-6
    assert min(probs.values()) >= 0


@pytest.mark.parametrize("h, w", [(37, 50), (64, 64), (90, 70)])
def test_restore_keeps_the_size(restorer, h, w):
    image = np.random.default_rng(1).random((h, w, 3)).astype(np.float32)
    calls = []
    out = restorer.restore(image, steps=3, strength=0.5, callback=lambda i, n: calls.append((i, n)))
    assert out.shape == (h, w, 3)
    assert 0 <= out.min() and out.max() <= 1
    assert calls[-1][0] == calls[-1][1] == len(calls)


def test_weights_folder_with_relative_base_paths_loads_like_the_default(restorer):
    from daclip_lora.tiny.locate import EMBEDDED_RESTORER

    other = webapp.Restorer.load(webapp.AppSettings(weights=str(EMBEDDED_RESTORER / "restoration"), device="cpu"))
    image = webapp.degraded_example("coins", "hazy")
    a, b = restorer.probabilities(image), other.probabilities(image)
    assert max(abs(a[k] - b[k]) for k in a) < 1e-6


def test_missing_weights_reach_the_page_as_a_message(tmp_path):
    def loader(settings):
        raise FileNotFoundError("no restoration weights at /nowhere")

    session = webapp._Session(webapp.AppSettings(), loader)
    assert "could not be loaded: no restoration weights at /nowhere" in session.status()
    with pytest.raises(ValueError, match="no restoration weights at /nowhere"):
        session.run(str(_upload(tmp_path)), 2, "ddim", 1.0, 0.5, 0, "auto")


def test_session_run_returns_probabilities_images_and_details(tmp_path, restorer):
    session = webapp._Session(webapp.AppSettings(), lambda s: restorer)
    probs, (lq, out), download, details = session.run(str(_upload(tmp_path)), 2, "euler", 1.0, 0.5, 0, "auto")
    assert read_image(out).shape == read_image(lq).shape == (56, 72, 3)
    assert download == out
    record = json.loads(details)
    assert (record["width"], record["height"]) == (72, 56)
    assert record["predicted_degradation"] == max(probs, key=probs.get)


def test_lora_scale_and_colour_fix_reach_the_pipeline(tmp_path, restorer):
    """The page's LoRA-scale slider and colour-fix menu change the output, are recorded, and reset per request."""
    session = webapp._Session(webapp.AppSettings(), lambda s: restorer)
    path = str(_upload(tmp_path))
    outs = {}
    for scale, fix in ((1.0, "none"), (0.0, "none"), (1.0, "adain"), (1.0, "none")):
        _, (_, out), _, details = session.run(path, 2, "ddim", 1.0, 0.5, 0, "auto", None, scale, fix)
        record = json.loads(details)
        assert (record["lora_scale"], record["color_fix"]) == (scale, fix)
        outs.setdefault((scale, fix), []).append(read_image(out))
    same = outs[(1.0, "none")]
    assert np.abs(same[0] - same[1]).max() == 0  # scale 0 in between left nothing behind
    assert np.abs(outs[(0.0, "none")][0] - same[0]).mean() > 1e-3
    assert np.abs(outs[(1.0, "adain")][0] - same[0]).mean() > 1e-3


@pytest.mark.parametrize("scale,fix,message", [(5, "none", r"lora_scale must be a number in \[0.0, 4.0\]"),
                                               (1.0, "sepia", "colour fix must be one of none, wavelet")])
def test_bad_lora_scale_or_colour_fix_is_one_line(tmp_path, restorer, scale, fix, message):
    session = webapp._Session(webapp.AppSettings(), lambda s: restorer)
    with pytest.raises(ValueError, match=message):
        session.run(str(_upload(tmp_path)), 2, "ddim", 1.0, 0.5, 0, "auto", None, scale, fix)


def test_cli_app_missing_weights_is_one_line(tmp_path, capsys):
    assert main(["app", "--weights", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights" in err[0] and "does not exist" in err[0]


def test_cli_app_without_gradio_says_which_extra(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["app"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[app]"' in err[0]


# --------------------------------------------------------------------------- hardening
@pytest.mark.parametrize("url", ["http://daclip-lora-test.invalid/a.png", "https://example.com/x.jpg",
                                 "file:///etc/passwd", "HTTP://X/y"])
def test_url_inputs_are_refused(url):
    assert webapp.is_url(url)
    with pytest.raises(ValueError, match="is a URL; the app takes uploaded files only"):
        webapp.read_upload(url)


@pytest.mark.parametrize("path", ["/tmp/a.png", "C:/x/y.png", "relative/http:/not.png", ""])
def test_file_paths_are_not_urls(path):
    assert not webapp.is_url(path)


def test_upload_above_the_size_cap_says_how_to_allow_it(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * (3 * 2 ** 20 // 2))  # 1.5 MB
    with pytest.raises(ValueError, match=r"big.png is 1.5 MB, above this app's upload limit of 1.0 MB.*"
                                         r"--max-upload-mb 2"):
        webapp.read_upload(path, max_mb=1.0)


def test_default_upload_cap_follows_max_pixels():
    assert webapp.AppSettings().max_upload_mb == 8.0
    assert webapp.AppSettings(max_pixels=4 * 2 ** 20).max_upload_mb == 32.0
    with pytest.raises(ValueError, match="cache_seconds must be >= 60"):
        webapp.AppSettings(cache_seconds=5)


@pytest.mark.parametrize("steps, guidance, strength, seed, message", [
    (20, 1.0, 0.5, 10 ** 30, r"seed must be a whole number in \[0, 4294967295\], got 10{30}"),
    (20, 1.0, 0.5, -1, "seed must be a whole number"),
    (0, 1.0, 0.5, 0, r"steps must be a whole number in \[1, 1000\], got 0"),
    (2.5, 1.0, 0.5, 0, "steps must be a whole number"),
    (20, 1.0, 0.0, 0, r"strength must be a number in \[0.01, 1.0\], got 0.0"),
    (20, float("nan"), 0.5, 0, "guidance must be a number"),
    (20, 1.0, "x", 0, "strength must be a number"),
])
def test_out_of_range_numbers_are_refused(steps, guidance, strength, seed, message):
    with pytest.raises(ValueError, match=message):
        webapp.check_request(steps, guidance, strength, seed)


def _no_models(settings):
    raise ValueError("no models in this test")


def test_session_refuses_an_out_of_range_seed_before_restoring(tmp_path):
    session = webapp._Session(webapp.AppSettings(), _no_models)
    with pytest.raises(ValueError, match="seed must be a whole number"):
        session.run(str(_upload(tmp_path)), 2, "ddim", 1.0, 0.5, 10 ** 30, "auto")
    with pytest.raises(ValueError, match="tile size must be 0 \\(off\\) to 4096 pixels"):
        webapp._tile_argument("100000")


def test_sweep_removes_old_outputs_and_close_removes_the_folder(tmp_path):
    session = webapp._Session(webapp.AppSettings(cache_seconds=600), _no_models)
    old, new = session._out_dir / "1" / "old.png", session._out_dir / "previews" / "new.png"
    for f in (old, new):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    os.utime(old, (0, 0))  # 1970
    assert session.sweep() == 1
    assert not old.parent.exists() and new.is_file()
    assert session.sweep(now=os.path.getmtime(new) + 601) == 1 and not any(session._out_dir.iterdir())
    session.close()
    assert not session._out_dir.exists()


# --------------------------------------------------------------------------- served page
#: the served page's upload cap (MB): above the test uploads (about 12 KB), below a 512x512 noise PNG
SERVED_UPLOAD_MB = 0.25
@pytest.fixture(scope="module")
def served(restorer):
    pytest.importorskip("gradio", reason='the web app needs the app extra: pip install -e ".[app]"')
    port = _free_port()
    app = webapp.launch(webapp.AppSettings(max_upload_mb=SERVED_UPLOAD_MB), port=port, block=False,
                        loader=lambda s: restorer)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_gradio_client_calls_the_restore_api(served, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    example = client.predict("coffee", "hazy", 0, api_name="/example")
    assert read_image(example).shape == (webapp.EXAMPLE_SIZE, webapp.EXAMPLE_SIZE, 3)
    label, (lq, out), download, details = client.predict(
        handle_file(str(_upload(tmp_path))), 2, "ddim", 1.0, 0.5, 0, "auto", 1.0, "none", api_name=f"/{webapp.API_NAME}")
    assert read_image(out).shape == (56, 72, 3)
    assert abs(sum(c["confidence"] for c in label["confidences"]) - 1) < 1e-4
    assert json.loads(details)["steps"] == 2
    assert json.loads(details)["objective"] == "one_step"  # the shipped tiny restorer


def test_served_app_refuses_an_oversized_upload(served, tmp_path):
    import httpx

    big = write_image(tmp_path / "big.png", np.random.default_rng(0).random((512, 512, 3)).astype(np.float32))
    assert big.stat().st_size > SERVED_UPLOAD_MB * 2 ** 20
    with open(big, "rb") as f:
        r = httpx.post(served + "gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=30)
    assert r.status_code == 413 and "maximum allowed size" in r.text.lower()


def test_served_app_refuses_a_url_input_without_resolving_it(served, monkeypatch):
    import httpx

    looked_up = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: looked_up.append(host) or real(host, *a, **k))
    url = "http://daclip-lora-test.invalid/x.png"
    data = [{"path": url, "url": url, "meta": {"_type": "gradio.FileData"}}, 2, "ddim", 1.0, 0.5, 0, "auto", 1.0, "none"]
    r = httpx.post(served + f"gradio_api/call/{webapp.API_NAME}", json={"data": data}, timeout=30)
    event = r.json()["event_id"]
    stream = httpx.get(served + f"gradio_api/call/{webapp.API_NAME}/{event}", timeout=60).text
    assert "event: error" in stream and "is a URL; the app takes uploaded files only" in stream
    assert "daclip-lora-test.invalid" not in looked_up


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # loopback only: any other host name resolves to nothing
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
def test_page_in_headless_chromium(served, tmp_path):
    pytest.importorskip("selenium", reason='the browser test needs the app extra: pip install -e ".[app]"')
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        driver.get(served)
        wait = WebDriverWait(driver, 180)
        wait.until(lambda d: "Models: " in d.find_element(By.ID, "status").text)
        # a corrupt upload: the page says why
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        driver.find_element(By.CSS_SELECTOR, "#input-file input[type=file]").send_keys(str(broken))
        wait.until(lambda d: "not a readable image" in d.find_element(By.TAG_NAME, "body").text)
        driver.get(served)
        wait.until(lambda d: "Models: " in d.find_element(By.ID, "status").text)
        # a real upload, restored
        driver.find_element(By.CSS_SELECTOR, "#input-file input[type=file]").send_keys(str(_upload(tmp_path)))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-preview img"))
        driver.find_element(By.ID, "restore").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compare img")) == 2
                   and d.find_elements(By.CSS_SELECTOR, "#download a"))
        sizes = [driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
                 for img in driver.find_elements(By.CSS_SELECTOR, "#compare img")]
        assert sizes == [[72, 56], [72, 56]]
        meters = driver.find_elements(By.CSS_SELECTOR, "#probabilities meter")
        assert len(meters) == len(DEGRADATION_FUNCTIONS)
        assert abs(sum(float(m.get_attribute("value")) for m in meters) - 1) < 1e-4
        shots = Path(os.environ.get("DACLIP_LORA_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shots / "app_e2e.png"))
    finally:
        driver.quit()
