"""Generation settings for tests that call the decoders directly, with the defaults those
functions had before they took one `GenerationConfig` (the config's own defaults are the
`sample` command's: temperature 0.8, top-k 200, seed 1337)."""

from __future__ import annotations

from typing import Any

from gptkit.generation.config import GenerationConfig


def opts(**settings: Any) -> GenerationConfig:
    """`generate` / `generate_tokens` settings: sampled at temperature 1, no top-k, a fresh
    seed unless one is given."""
    return GenerationConfig(**{"temperature": 1.0, "top_k": None, "seed": None, **settings})


def beam_opts(**settings: Any) -> GenerationConfig:
    """`beam_search` settings: as `opts`, but plain (not sampled) beams by default."""
    return opts(**{"temperature": 0.0, **settings})
