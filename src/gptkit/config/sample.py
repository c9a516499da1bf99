"""The `sample:` section (defaults of `gptkit sample`) and its checks, kept as they were.

Another part of issue 18 replaces these with one generation-settings object; until then the
section stays a stdlib dataclass, which `RunConfig` validates through the same value types
as the other sections (gptkit.config.run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class SampleConfig:
    """Defaults of `gptkit sample`; each setting means what it means in `transformers`'
    `generate` (see `gptkit.generate`)."""

    prompt: str | None = None  # None: start from the end-of-text token
    max_new_tokens: int = 500
    min_new_tokens: int = 0  # end-of-text is forbidden before this many new tokens
    temperature: float = 0.8  # 0 means greedy (with num_beams > 1: beam search, else sampled)
    top_k: int | None = 200
    top_p: float = 1.0
    typical_p: float = 1.0  # typical sampling; 1 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text; 1 = off
    no_repeat_ngram_size: int = 0  # no n-gram of this many tokens occurs twice; 0 = off
    bad_words: list[str] = field(default_factory=list)  # words/phrases never generated
    stop: list[str] = field(default_factory=list)  # stop strings: the text ends before one
    num_samples: int = 1  # per prompt (transformers' num_return_sequences)
    num_beams: int = 1  # > 1: beam search
    length_penalty: float = 1.0  # beam score = log-prob / length ** length_penalty
    early_stopping: bool | str = False  # beam search: true, false or "never"
    # the samples training writes (samples.txt): the same each evaluation; None: fresh.
    # `gptkit sample` and `serve` draw fresh randomness unless given a seed.
    seed: int | None = 1337


def sample_checks(s: SampleConfig, prefix: str = "sample.") -> list[tuple[bool, str]]:
    """Checks on generation settings, shared by the config and the `sample` command."""
    return [
        (s.max_new_tokens >= 0, f"{prefix}max_new_tokens must be >= 0 (got {s.max_new_tokens})"),
        (s.temperature >= 0, f"{prefix}temperature must be >= 0 (got {s.temperature})"),
        (s.top_k is None or s.top_k >= 1, f"{prefix}top_k must be >= 1 (got {s.top_k})"),
        (0 < s.top_p <= 1, f"{prefix}top_p must be in (0, 1] (got {s.top_p})"),
        (s.num_samples >= 1, f"{prefix}num_samples must be >= 1 (got {s.num_samples})"),
        (s.min_new_tokens >= 0, f"{prefix}min_new_tokens must be >= 0 (got {s.min_new_tokens})"),
        (0 < s.typical_p <= 1, f"{prefix}typical_p must be in (0, 1] (got {s.typical_p})"),
        (s.repetition_penalty > 0,
         f"{prefix}repetition_penalty must be > 0, 1 = off (got {s.repetition_penalty})"),
        (s.no_repeat_ngram_size >= 0,
         f"{prefix}no_repeat_ngram_size must be >= 0, 0 = off (got {s.no_repeat_ngram_size})"),
        (all(isinstance(w, str) and w for w in s.bad_words),
         f"{prefix}bad_words must be a list of non-empty strings (got {s.bad_words!r})"),
        (all(isinstance(w, str) and w for w in s.stop),
         f"{prefix}stop must be a list of non-empty strings (got {s.stop!r})"),
        (s.num_beams >= 1, f"{prefix}num_beams must be >= 1 (got {s.num_beams})"),
        (s.num_beams == 1 or s.num_samples <= s.num_beams,
         f"{prefix}num_samples ({s.num_samples}) must be <= {prefix}num_beams ({s.num_beams}) "
         "with beam search: the best beams are returned"),
        (math.isfinite(s.length_penalty),
         f"{prefix}length_penalty must be a finite number (got {s.length_penalty})"),
        (s.early_stopping in (True, False, "never"),
         f"{prefix}early_stopping must be true, false or never (got {s.early_stopping!r})"),
    ]
