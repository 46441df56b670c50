"""Screenshot of ``daclip-lora app`` for the README: an example photograph degraded on the fly, restored, in
headless Chromium (Debian's chromium + chromedriver, Selenium).

    python bench/app_screenshot.py --out docs/app.png [--example chelsea --degradation noisy]
"""

import argparse
import socket
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from daclip_lora.apps.web import AppSettings, launch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/app.png"))
    ap.add_argument("--example", default="chelsea")
    ap.add_argument("--degradation", default="noisy")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(AppSettings(device="cpu"), port=port, block=False)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1180",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 300)
        wait.until(lambda d: "Models: " in d.find_element(By.ID, "status").text)
        # pick the example and degradation through the API the page uses, then press the buttons
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        path = client.predict(args.example, args.degradation, 0, api_name="/example")
        driver.find_element(By.CSS_SELECTOR, "#input-file input[type=file]").send_keys(path)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-preview img"))
        driver.find_element(By.ID, "restore").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compare img")) == 2
                   and d.find_elements(By.CSS_SELECTOR, "#download a"))
        time.sleep(1.0)
        # the whole page, the Sampling accordion (LoRA scale, colour fix) included: grow the window to it
        for _ in range(3):  # the layout reflows as the window grows; the window's chrome is not in the viewport
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1300, min(int(height) + 200, 4000))
            time.sleep(1.0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        app.close()


if __name__ == "__main__":
    main()
