"""Take the README's screenshots of the playground page (`gptkit serve`) in headless Chromium:
`python docs/make_playground_screenshot.py [--run runs/figures/lr1e-3]` (the default
recipe's model that docs/make_figures.py trains). Serves the run on 127.0.0.1, streams a
completion into the page and writes docs/images/playground.png, then draws the prompt's
attention map and writes docs/images/playground-attention.png. Needs the serve extra,
selenium, and Chromium with chromedriver (Debian: apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gptkit.run import load_run
from gptkit.serve import ServeSettings, background, create_app

PROMPT = "ROMEO:\nWhat say you?"


def whole_page(driver: webdriver.Chrome, path: Path) -> None:
    """A screenshot of the whole page: the window is made as tall as the page first."""
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1100, height + chrome)
    driver.save_screenshot(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/figures/lr1e-3"))
    parser.add_argument("--name", default="shakespeare-char", help="model id shown")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    app = create_app(load_run(args.run), ServeSettings(), name=args.name)
    options = Options()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--window-size=1100,700", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 60, poll_frequency=0.05)
    try:
        with background(app) as url:
            driver.get(url + "/")
            wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            prompt = driver.find_element(By.ID, "prompt")
            prompt.clear()
            prompt.send_keys(PROMPT)
            for element_id, value in (("seed", str(args.seed)), ("max_tokens", "250")):
                driver.execute_script(
                    "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                    "e.dispatchEvent(new Event('input'));", element_id, value)
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: d.execute_script("return document.body.dataset.finish"))
            args.out.mkdir(parents=True, exist_ok=True)
            whole_page(driver, args.out / "playground.png")
            driver.find_element(By.ID, "tab-attention").click()
            driver.execute_script("document.getElementById('layer').innerHTML = "
                                  "'<option value=\"1\">1</option>';")
            driver.find_element(By.ID, "show-attention").click()
            wait.until(lambda d: d.execute_script(
                "return document.body.dataset.attention === 'drawn'"))
            whole_page(driver, args.out / "playground-attention.png")
    finally:
        driver.quit()
    for name in ("playground.png", "playground-attention.png"):
        path = args.out / name
        print(f"wrote {path} ({path.stat().st_size / 1000:.0f} kB)")


if __name__ == "__main__":
    main()
