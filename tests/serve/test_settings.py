"""Server settings: each limit is checked with a message naming its flag."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import pytest

from gptkit.errors import GptkitError
from gptkit.serve import ServeSettings, create_app


@pytest.mark.parametrize(("bad", "match"), [
    ({"max_batch_size": 0}, "--max-batch-size"), ({"port": 70000}, "--port"),
    ({"api_key": " x"}, "--api-key"), ({"api_key": ""}, "--api-key"),
    ({"max_tokens": 0}, "--max-tokens"), ({"max_prompt_tokens": 0}, "--max-prompt-tokens"),
    ({"max_concurrent": 0}, "--max-concurrent"), ({"max_body_bytes": 10}, "--max-body-bytes"),
    ({"prefill_chunk": 0}, "--prefill-chunk"), ({"prefix_cache_mb": -1}, "--prefix-cache-mb"),
])
def test_bad_settings_are_refused(run, bad, match):
    with pytest.raises(GptkitError, match=match):
        create_app(run, ServeSettings(**bad))


def test_loopback_hosts():
    assert ServeSettings().is_loopback and ServeSettings(host="localhost").is_loopback
    assert ServeSettings(host="::1").is_loopback
    assert not ServeSettings(host="0.0.0.0").is_loopback
    assert not ServeSettings(host="example.org").is_loopback
