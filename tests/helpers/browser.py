"""The demo page in a real browser: `python demo.py` as a server, headless Chromium to drive it."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from helpers.compose import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",  # a tab in the background keeps polling
)  # fmt: skip
SERVER_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
              "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}  # fmt: skip

# how long a wait may take before the page counts as hung: no speed limit (beside the suite's other
# worker a 20-step sample of a few seconds took over a minute, its last step to "done" included)
HANG_S = 300.0


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


Server = tuple[subprocess.Popen, str]  # the demo process and its url


def start_demo(run_dir: Path, *overrides: str, timeout: float = HANG_S) -> Server:
    """`python demo.py` on a free port, in its own process group, once GET / answers 200."""
    port, log = free_port(), run_dir.parent / f"{run_dir.name}.log"
    env = dict(os.environ, **SERVER_ENV, GRADIO_TEMP_DIR=str(run_dir.parent / "gradio_cache"))
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "demo.py", f"port={port}", f"hydra.run.dir={run_dir}", *overrides],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    ended = proc.poll()
    stop_demo(proc)
    why = f"exited with {ended}" if ended is not None else f"did not serve {url} in {timeout:.0f} s"
    raise RuntimeError(f"demo.py {why}; its log:\n{log.read_text()[-3000:]}")


def stop_demo(proc: subprocess.Popen) -> None:
    """End the server and anything it started (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def missing_browser() -> str | None:
    """None when Chromium and chromedriver are there (installed with apt-get if need be and
    possible); else why not, in one line."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} or {CHROMEDRIVER} missing and there is no apt-get to install them"
    packages = "chromium chromium-driver"
    if os.geteuid() != 0:
        return f"{CHROMIUM} or {CHROMEDRIVER} missing and not root to apt-get install {packages}"
    install = f"apt-get update && apt-get install -y --no-install-recommends {packages}"
    done = subprocess.run(["sh", "-c", install], capture_output=True, text=True)
    if done.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`{install}` failed (exit {done.returncode}): {last}"
    return None


def chrome() -> WebDriver:
    """A headless Chromium driven by chromedriver."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def save_page_screenshot(driver: WebDriver, path: Path) -> Path:
    """The whole page (not only the window) as a PNG at `path`."""
    size = driver.get_window_size()
    width, height = driver.execute_script(
        "const e = document.documentElement;"
        "return [Math.max(e.scrollWidth, e.clientWidth), Math.max(e.scrollHeight, e.clientHeight)];"
    )
    driver.set_window_size(max(width, size["width"]), max(height, size["height"]))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def mean_rgb(url: str) -> np.ndarray:
    """The mean colour, RGB in [0, 1], of the image at `url`."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        image = Image.open(io.BytesIO(answer.read())).convert("RGB")
    return np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0) / 255


class DemoPage:
    """One tab of the demo page: its controls by `elem_id`, set as a user sets them."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver, self.url = driver, url
        self.handle = driver.current_window_handle  # this page's tab
        self.before = ""  # the status when Sample was last pressed
        self.seen: list[str] = []  # what the page showed while waiting, in order

    def open(self) -> DemoPage:
        self.driver.get(self.url)
        self.wait(
            lambda: self.driver.find_elements(By.CSS_SELECTOR, "#run"), HANG_S, "Sample button"
        )
        return self

    def focus(self) -> None:
        """Make this page's tab the one the driver talks to."""
        if self.driver.current_window_handle != self.handle:
            self.driver.switch_to.window(self.handle)

    def find(self, css: str) -> WebElement:
        self.focus()
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def type(self, elem_id: str, text: str) -> None:
        """Replace the text of a Textbox or Number and leave it, as a user does."""
        box = self.find(f"#{elem_id} textarea, #{elem_id} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE, text, Keys.TAB)

    def choose(self, elem_id: str, value: str) -> None:
        """Click a Radio's option."""
        self.find(f"#{elem_id} input[value='{value}']").click()

    def pick_colour(self, hex_colour: str) -> None:
        """Open the ColorPicker, type `#rrggbb` in its hex box, Enter, click outside to close."""
        self.find("#colour button.dialog-button").click()
        box = self.find("#colour .color-picker input[type=text]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE, hex_colour, Keys.ENTER)
        self.find("h1").click()
        r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        swatch, button = f"background: rgb({r}, {g}, {b})", "#colour button.dialog-button"
        self.wait(lambda: swatch in self.find(button).get_attribute("style"), HANG_S,
                  f"colour swatch showing {hex_colour}")  # fmt: skip

    def sample(self) -> None:
        """Press Sample."""
        self.before, self.seen = self.status(), []
        self.find("#run").click()

    def status(self) -> str:
        """The status Markdown as rendered text (without Gradio's progress overlay)."""
        return self.find("#status [data-testid=markdown]").text.strip()

    def command(self) -> str:
        return self.find("#command textarea").get_attribute("value")

    def image_url(self, elem_id: str) -> str | None:
        self.focus()
        images = self.driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        return images[0].get_attribute("src") if images else None

    def download_url(self) -> str | None:
        self.focus()
        links = self.driver.find_elements(By.CSS_SELECTOR, "#download a[href]")
        return links[0].get_attribute("href") if links else None

    def page_source(self) -> str:
        self.focus()
        return self.driver.page_source

    def wait_status(self, prefix: str, timeout: float = HANG_S) -> str:
        """Poll until the status, changed since Sample was pressed, starts with `prefix`;
        each new status (and `<progression image>` once it shows) goes to `seen`."""

        def reached() -> bool:
            text = self.status()
            if text and (not self.seen or self.seen[-1] != text):
                self.seen.append(text)
            if "<progression image>" not in self.seen and self.image_url("progression"):
                self.seen.append("<progression image>")
            return text != self.before and text.startswith(prefix)

        self.wait(reached, timeout, f"status starting {prefix!r}")
        return self.status()

    def wait(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:.0f} s; seen: {self.seen}")
            time.sleep(0.1)
