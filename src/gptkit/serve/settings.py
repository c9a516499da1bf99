"""The server's settings: where it listens, who may call it, and the limits that keep it up."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gptkit.errors import check_all

DEFAULT_PREFIX_CACHE_MB = 256  # the prefix store's budget unless told


@dataclass
class ServeSettings:
    """What `gptkit serve` is told on its command line (same names, `--max-batch-size` ...).

    The limits bound the work one request or one client can ask for, so that no input can
    exhaust memory or hold the model forever: bodies over `max_body_bytes` and prompts over
    `max_prompt_tokens` are refused with 413, `max_tokens` above the limit with 422, and
    requests beyond `max_concurrent` in progress (queued or generating) with 429.
    """

    host: str = "127.0.0.1"  # loopback: nothing outside this machine can connect
    port: int = 8000  # 0: any free port (the one chosen is printed)
    api_key: str | None = None  # when set, /v1/* need "Authorization: Bearer <key>"
    # completion rows (prompts x n) decoding together: the KV pool's slots of block_size
    # positions each, allocated at start (also the most rows one request may ask for)
    max_batch_size: int = 16
    prefill_chunk: int = 64  # prompt tokens prefilled per step beside the decoding rows
    # KV of recent prompts and texts kept for reuse (with a draft, the draft's KV too);
    # 0 = off; None: the default
    prefix_cache_mb: float | None = None
    max_prompt_tokens: int = 2048  # longer prompts: 413 (the model sees its last block_size)
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    max_concurrent: int = 32  # requests in progress at once; more are refused with 429
    max_body_bytes: int = 1_000_000  # larger request bodies: 413
    max_attention_tokens: int = 128  # longest prompt whose attention map is drawn
    max_logprobs: int = 20  # the most alternatives per token a request may ask (as vLLM)

    def check(self) -> None:
        """One GptkitError naming the first bad setting and its allowed range."""
        checks = [
            (0 <= self.port <= 65535, f"--port must be in 0..65535, got {self.port}"),
            (self.max_batch_size >= 1,
             f"--max-batch-size must be >= 1, got {self.max_batch_size}"),
            (self.prefill_chunk >= 1,
             f"--prefill-chunk must be >= 1, got {self.prefill_chunk}"),
            (self.prefix_cache_mb is None or self.prefix_cache_mb >= 0,
             f"--prefix-cache-mb must be >= 0 (0 = off), got {self.prefix_cache_mb}"),
            (self.max_prompt_tokens >= 1,
             f"--max-prompt-tokens must be >= 1, got {self.max_prompt_tokens}"),
            (self.max_tokens >= 1, f"--max-tokens must be >= 1, got {self.max_tokens}"),
            (self.max_concurrent >= 1,
             f"--max-concurrent must be >= 1, got {self.max_concurrent}"),
            (self.max_body_bytes >= 1024,
             f"--max-body-bytes must be >= 1024, got {self.max_body_bytes}"),
            (self.max_logprobs >= 0,
             f"--max-logprobs must be >= 0, got {self.max_logprobs}"),
            (self.max_attention_tokens >= 1,
             f"max_attention_tokens must be >= 1, got {self.max_attention_tokens}"),
            (self.api_key is None or (self.api_key.strip() == self.api_key
                                      and bool(self.api_key) and self.api_key.isprintable()),
             "--api-key must be a non-empty printable string without surrounding spaces"),
        ]
        check_all(checks)

    @property
    def is_loopback(self) -> bool:
        """Whether only this machine can reach `host`."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
