"""`gptkit serve` on the command line, and servers in a background thread."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import socket
import subprocess
import sys

import httpx
import pytest

from gptkit.cli import build_parser
from gptkit.serve import background, create_app
from tests.test_cli import expect_error


def test_help_explains_every_option():
    text = subprocess.run([sys.executable, "-m", "gptkit", "serve", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for flag in ("--host", "--port", "--api-key", "--max-batch-size", "--max-prompt-tokens",
                 "--max-tokens", "--max-concurrent", "--max-body-bytes", "--quantize",
                 "--max-logprobs", "--device", "--checkpoint", "127.0.0.1", "--prefill-chunk",
                 "--prefix-cache-mb"):
        assert flag in text


def test_the_command_serves_until_interrupted(cli_server):
    assert cli_server.startswith("http://127.0.0.1:")
    health = httpx.get(cli_server + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["limits"]["max_tokens"] == 256
    assert health["limits"]["max_logprobs"] == 7  # --max-logprobs
    response = httpx.post(cli_server + "/v1/completions", timeout=60,
                          json={"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200 and len(response.json()["choices"][0]["text"]) == 8


def test_bad_options_are_one_line_errors(tiny_run, tmp_path, capsys):
    run = str(tiny_run)
    expect_error(capsys, "serve", run, "--port", "70000", match="--port must be in 0..65535")
    expect_error(capsys, "serve", run, "--max-batch-size", "0", match="--max-batch-size")
    expect_error(capsys, "serve", run, "--max-tokens", "0", match="--max-tokens")
    expect_error(capsys, "serve", run, "--prefill-chunk", "0", match="--prefill-chunk")
    # requests join at every step: there is no batch window to wait for any more
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", run, "--batch-window-ms", "5"])
    assert exit_.value.code == 2 and "--batch-window-ms" in capsys.readouterr().err
    expect_error(capsys, "serve", str(tmp_path / "nothing"), match="does not exist")
    # an address of no interface here (TEST-NET-1): nothing is sent anywhere
    expect_error(capsys, "serve", run, "--host", "192.0.2.1", match="cannot listen on 192.0.2.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        expect_error(capsys, "serve", run, "--port", port, match="cannot listen")


def test_background_servers_start_and_stop(run):
    app = create_app(run)
    for _ in range(2):  # an app can be served again after it stopped
        with background(app) as url:
            assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
            assert httpx.post(url + "/v1/completions", json={"max_tokens": 2},
                              timeout=30).status_code == 200
    try:
        httpx.get(url + "/health", timeout=2)
        raise AssertionError("the server still answers")
    except httpx.TransportError:
        pass
