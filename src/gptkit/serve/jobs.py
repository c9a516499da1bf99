"""What a request asks of the engine (a `Job`) and hears back (its events, in order: an echoed
`Prompt`, deltas, one `Finish` per choice, then `End`, or a `Failure`), and the engine's
counters (`Stats`). Kept apart from the engine so that the HTTP side (replies, metrics) and
the stepping side (stepper, speculate) share these types without importing each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gptkit.generation.config import GenerationConfig
from gptkit.generation.logprobs import TokenLogprob


# --- what a request hears back, in order: deltas, one finish per choice, then end -------------
@dataclass
class Prompt:
    """An echoed prompt's tokens (first of all events; jobs with `echo_logprobs` only)."""

    prompt: int  # which of the job's prompts
    tokens: list[TokenLogprob]  # the first one's logprob and top are None


@dataclass
class FirstToken:
    """A non-streamed job's first token has been drawn (once per job; a streamed job's first
    Delta says it): what the time to first token is measured to (`serve.metrics`)."""


@dataclass
class Delta:
    index: int  # choice
    text: str  # new text of that choice (streaming requests only)
    tokens: list[TokenLogprob] | None = None  # those whose text this delta carries


@dataclass
class Finish:
    index: int
    text: str  # the choice's whole text
    # "stop" (end-of-text or a stop string), "length" (max_tokens reached) or
    # "content_filter" (the guard withheld the rest: `text` is what was streamed before it)
    reason: str
    tokens: list[TokenLogprob] | None = None  # every token of `text` (when logprobs asked)


@dataclass
class End:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failure:
    message: str
    status: int = 500  # 422: the request asked for something impossible


Event = Prompt | FirstToken | Delta | Finish | End | Failure


@dataclass(eq=False)
class Job:
    """One completion request: `prompts` x `settings.num_samples` rows, generated until each
    ends; its settings are the request's (`CompletionRequest.generation_config`)."""

    prompts: list[list[int]]
    settings: GenerationConfig
    stream: bool
    emit: Callable[[Event], None]  # called from the worker thread; must be thread-safe
    logprobs: int | None = None  # report each token's log-probability and this many others
    echo_logprobs: bool = False  # also the prompts' (Prompt events; needs `logprobs`)
    keep: int | None = None  # best_of: return the best `keep` of the n rows of each prompt
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return self.settings.num_samples

    @property
    def max_tokens(self) -> int:
        return self.settings.max_new_tokens

    @property
    def stops(self) -> list[str]:
        return self.settings.stop

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    @property
    def ranks(self) -> bool:
        """Whether this job returns only its best candidates (then it never streams)."""
        return self.keep is not None and self.keep < self.n

    @property
    def scored(self) -> bool:
        """Whether its tokens' log-probabilities are needed (reported or ranked)."""
        return self.logprobs is not None or self.ranks


@dataclass
class Stats:
    """Counters shown by GET /health (written by the worker thread; `queued_jobs` also by
    `submit`)."""

    steps: int = 0  # decoding steps run
    jobs: int = 0  # requests that started generating
    rows: int = 0  # their rows (prompts x n)
    largest_batch: int = 0  # most requests running at one step
    cancelled: int = 0  # requests whose generation stopped because the client left
    tokens: int = 0  # completion tokens of finished requests
    prompt_tokens_computed: int = 0  # prompt positions run through the model
    prompt_tokens_reused: int = 0  # prompt positions whose KV was copied (prefix reuse, n > 1)
    queued_jobs: int = 0  # waiting for room in the KV pool
    running_jobs: int = 0
    running_rows: int = 0  # = KV pool slots in use
    prefix_cache_bytes: int = 0  # KV kept for prefix reuse (within --prefix-cache-mb)
    prefix_cache_entries: int = 0
    prefix_cache_evictions: int = 0
    draft_tokens: int = 0  # tokens a draft model proposed (speculative decoding, --draft)
    accepted_tokens: int = 0  # of those, kept by the model (each row's own count)
    withheld: int = 0  # choices the guard ended with finish_reason content_filter
