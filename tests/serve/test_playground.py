"""The playground page in a real headless Chromium, against `gptkit serve` itself: type a
prompt, generate, watch the text stream in; then the attention tab draws the prompt's map;
the chat tab streams replies, sends the history with each turn, stops and clears.

Needs selenium (dev extra) and Chromium with its driver (Debian: apt-get install chromium
chromium-driver, which .ci/run does); skips, saying which is missing, where they are not.
Set GPTKIT_PLAYGROUND_SCREENSHOT=FILE.png to keep a screenshot of the page.
"""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BINARY = next((path for name in BROWSERS if (path := shutil.which(name))), None)
DRIVER = shutil.which("chromedriver")
if BINARY is None or DRIVER is None:
    MISSING = " and ".join(n for n, p in (("chromium", BINARY), ("chromedriver", DRIVER))
                           if p is None)
    pytest.skip(f"no headless browser: {MISSING} not found on PATH (Debian: apt-get install "
                "chromium chromium-driver; .ci/run installs them as root)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = BINARY
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,760", "--hide-scrollbars"):
        options.add_argument(arg)
    # an explicit driver path: selenium's manager never looks anything up online
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, script: str, what: str, timeout: float = 60) -> Any:
    """Poll a JavaScript expression in the page until it is truthy (a bound, not a timing)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script("return " + script), message=f"waiting until {what}")


def set_value(driver: Any, element_id: str, value: str) -> None:
    """Set an input as a user would leave it (range inputs cannot be typed into)."""
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));", element_id, value)


def test_the_playground_streams_text_and_draws_attention(browser, cli_server, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(cli_server + "/")
    wait_for(browser, "document.body.dataset.ready === '1'", "the page has read /health")
    assert "tiny" in browser.find_element(By.ID, "model-info").text
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("ROMEO:")
    set_value(browser, "temperature", "0")
    set_value(browser, "max_tokens", "80")
    # count the updates of the text: streamed text arrives in many pieces
    browser.execute_script(
        "window.updates = 0; new MutationObserver(() => window.updates++).observe("
        "document.getElementById('completion'), {childList: true, characterData: true, "
        "subtree: true});")
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, "document.body.dataset.finish", "the stream has finished")
    assert browser.execute_script("return document.body.dataset.finish") in ("stop", "length")
    shown = browser.execute_script("return document.getElementById('completion').textContent")
    expected = httpx.post(cli_server + "/v1/completions", timeout=60, json={
        "prompt": "ROMEO:", "max_tokens": 80, "temperature": 0}).json()["choices"][0]["text"]
    assert shown == expected and shown
    assert browser.execute_script("return window.updates") > 10
    assert "finished" in browser.find_element(By.ID, "stats").text
    assert not browser.find_element(By.ID, "stop-button").is_enabled()
    keep = os.environ.get("GPTKIT_PLAYGROUND_SCREENSHOT")
    browser.save_screenshot(str(keep and Path(keep) or tmp_path / "playground.png"))

    browser.find_element(By.ID, "tab-attention").click()
    assert browser.find_element(By.ID, "panel-attention").is_displayed()
    assert not browser.find_element(By.ID, "panel-generate").is_displayed()
    assert browser.find_element(By.ID, "attn-prompt").get_attribute("value") == "ROMEO:"
    browser.find_element(By.ID, "show-attention").click()
    wait_for(browser, "document.body.dataset.attention === 'drawn'", "the map is drawn")
    canvas = browser.find_element(By.ID, "attn-canvas")
    assert canvas.get_attribute("data-tokens") == str(len("ROMEO:"))
    assert canvas.size["width"] > 100 and canvas.size["height"] > 100
    # the first query's only key (itself) has weight 1: the colour map's bright yellow
    pixel = browser.execute_script(
        "const c = document.getElementById('attn-canvas'), r = window.devicePixelRatio || 1;"
        "const left = +c.dataset.left, cell = +c.dataset.cell;"
        "return Array.from(c.getContext('2d').getImageData((left + cell / 2) * r, "
        "(left + cell / 2) * r, 1, 1).data);")
    assert pixel[:3] == [253, 231, 37]
    heads = [o.get_attribute("value") for o in
             browser.find_element(By.ID, "head").find_elements(By.TAG_NAME, "option")]
    assert heads == ["mean", "0", "1"]
    assert browser.get_log("browser") == []  # no script errors, no failed requests


def test_the_chat_tab_streams_replies_keeps_the_history_and_stops(browser, chat_run,
                                                                   tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.serve.conftest import live_server

    with live_server(chat_run, max_tokens=1024, max_prompt_tokens=4096) as (url, _):
        browser.get(url + "/")
        wait_for(browser, "document.body.dataset.ready === '1'", "the page has read /health")
        browser.find_element(By.ID, "tab-chat").click()
        assert browser.find_element(By.ID, "panel-chat").is_displayed()
        assert not browser.find_element(By.ID, "panel-generate").is_displayed()
        assert browser.find_element(By.ID, "temperature").is_displayed()  # the shared controls
        browser.find_element(By.ID, "system").send_keys("You are brief.")
        set_value(browser, "temperature", "1")
        set_value(browser, "seed", "3")
        set_value(browser, "max_tokens", "40")
        browser.execute_script(
            "window.updates = 0; new MutationObserver((m) => window.updates += m.length)"
            ".observe(document.getElementById('conversation'), {childList: true, "
            "characterData: true, subtree: true});")

        def say(text: str) -> tuple[dict[str, Any], str]:
            """Type a message, send it with Enter: (the request the page sent, the reply)."""
            browser.execute_script("delete document.body.dataset.chatFinish")
            browser.find_element(By.ID, "chat-input").send_keys(text, Keys.ENTER)
            wait_for(browser, "document.body.dataset.chatFinish", "the reply has finished")
            assert browser.execute_script("return document.body.dataset.chatFinish") in (
                "stop", "length")
            replies = browser.find_elements(By.CSS_SELECTOR, "#conversation .msg.assistant")
            return (browser.execute_script("return window.lastChatRequest"),
                    browser.execute_script("return arguments[0].querySelector('.body')"
                                           ".textContent", replies[-1]))

        sent, first = say("Hello there")
        assert sent["stream"] is True and sent["messages"] == [
            {"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Hello there"}]
        whole = httpx.post(url + "/v1/chat/completions", timeout=60,
                           json={**sent, "stream": False}).json()
        assert first == whole["choices"][0]["message"]["content"] and first
        # it streamed in: a change of the conversation per piece (one token each)
        tokens = whole["usage"]["completion_tokens"]
        assert browser.execute_script("return window.updates") >= tokens > 3
        sent, second = say("And now?")
        assert sent["messages"][1:] == [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And now?"}]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#conversation .msg")) == 4
        keep = os.environ.get("GPTKIT_PLAYGROUND_CHAT_SCREENSHOT")
        browser.save_screenshot(str(keep and Path(keep) or tmp_path / "playground-chat.png"))

        # a long greedy reply, stopped while it streams
        set_value(browser, "temperature", "0")
        set_value(browser, "max_tokens", "1024")
        browser.execute_script("delete document.body.dataset.chatFinish")
        browser.find_element(By.ID, "chat-input").send_keys("Go on", Keys.ENTER)
        wait_for(browser, "document.body.dataset.chat === 'streaming' && document."
                 "querySelectorAll('#conversation .msg.assistant')[2].textContent.length > 12",
                 "the third reply streams")
        browser.find_element(By.ID, "chat-stop").click()
        wait_for(browser, "document.body.dataset.chatFinish === 'aborted'", "it stopped")
        assert browser.find_element(By.ID, "send").is_enabled()
        assert not browser.find_element(By.ID, "chat-stop").is_enabled()
        assert "stopped" in browser.find_element(By.ID, "chat-stats").text

        browser.find_element(By.ID, "chat-reset").click()
        assert browser.find_elements(By.CSS_SELECTOR, "#conversation .msg") == []
        set_value(browser, "max_tokens", "4")
        sent, _ = say("Fresh start")
        assert sent["messages"][1:] == [{"role": "user", "content": "Fresh start"}]
        assert [e for e in browser.get_log("browser")
                if "chat/completions" not in e["message"]] == []


def test_the_compare_tab_streams_two_hidden_answers_and_reveals_them_after_the_vote(
        browser, cli_server, tiny_run, tmp_path):
    """`gptkit serve RUN --compare RUN/checkpoints/step-N --votes DIR --prompts FILE`: the
    Compare tab streams both sides, shows no model name until the vote, stores the vote."""
    from selenium.webdriver.common.by import By

    from gptkit.arena.store import VoteStore
    from tests.serve.conftest import serve_cli

    browser.get(cli_server + "/")  # a server without --compare has no Compare tab
    wait_for(browser, "document.body.dataset.ready === '1'", "the page has read /health")
    assert not browser.find_element(By.ID, "tab-compare").is_displayed()

    (tmp_path / "prompts.txt").write_text("JULIET:\nKING HENRY:\n")
    step = tiny_run / "checkpoints" / "step-000010"
    with serve_cli(tiny_run, tmp_path / "log.txt", "--compare", str(step), "--votes",
                   str(tmp_path / "votes"), "--prompts", str(tmp_path / "prompts.txt")) as url:
        browser.get(url + "/")
        wait_for(browser, "document.body.dataset.ready === '1'", "the page has read /health")
        browser.find_element(By.ID, "tab-compare").click()
        assert browser.find_element(By.ID, "panel-compare").is_displayed()
        assert browser.find_element(By.ID, "arena-models").text == "(2 models)"
        set_value(browser, "arena-max-tokens", "60")
        browser.execute_script(
            "window.updates = {a: 0, b: 0}; for (const s of ['a', 'b']) new MutationObserver("
            "(m) => window.updates[s] += m.length).observe(document.getElementById("
            "'arena-text-' + s), {childList: true, characterData: true, subtree: true});")
        browser.find_element(By.ID, "arena-next").click()  # a prompt of the --prompts file
        wait_for(browser, "document.body.dataset.arena === 'voting'", "both answers ended")
        prompt = browser.find_element(By.ID, "arena-prompt").get_attribute("value")
        assert prompt in ("JULIET:", "KING HENRY:")
        texts = [browser.find_element(By.ID, f"arena-text-{s}").text for s in "ab"]
        assert all(texts)
        updates = browser.execute_script("return window.updates")
        # streamed, piece by piece (an unseeded side may draw end-of-text within a few
        # tokens: it is held to arriving in more than one piece only when it is longer)
        assert max(updates.values()) > 3
        assert all(updates[s] > 1 for s, text in zip("ab", texts, strict=True) if len(text) > 20)
        assert "tiny" not in browser.find_element(By.ID, "panel-compare").text
        assert browser.find_element(By.ID, "vote-b").is_enabled()
        browser.find_element(By.ID, "vote-b").click()
        wait_for(browser, "document.body.dataset.arena === 'voted'", "the vote is stored")
        names = [browser.find_element(By.ID, f"arena-name-{s}").text for s in "ab"]
        assert sorted(names) == ["tiny", "tiny@step-000010"]
        assert not browser.find_element(By.ID, "vote-a").is_enabled()  # one vote a battle
        (vote,) = VoteStore.open(tmp_path / "votes").votes()
        assert (vote.model_a, vote.model_b, vote.winner) == (names[0], names[1], "b")
        keep = os.environ.get("GPTKIT_PLAYGROUND_COMPARE_SCREENSHOT")
        browser.save_screenshot(str(keep and Path(keep) or tmp_path / "compare.png"))
        assert browser.get_log("browser") == []
