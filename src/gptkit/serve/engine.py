"""The model side of the server: batched generation, attention maps and classification.

Everything here is synchronous and runs in the server's single worker thread, one call at a
time (the batcher decides which requests share a call), so the model is never used by two
threads at once. Generation is `gptkit.generation.sampling.generate_tokens` on the requests'
prompts, one `GenerationConfig` per request (`Job.settings`),
left-padded with an attention mask and decoded with the KV cache; each request samples from
a generator of its own (`seed_groups`), so its text does not depend on what it was batched
with. Text is cut at stop strings and streamed as `sample_text` does it (held back while it
could be the start of a stop string or ends inside a UTF-8 character).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gptkit.errors import GptkitError
from gptkit.finetune.classifier import Classifier
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate_tokens
from gptkit.generation.text import first_stop, showable
from gptkit.model import GPT
from gptkit.run import Run
from gptkit.tokenizers import Tokenizer

log = logging.getLogger("gptkit.serve")


# --- what a request hears back, in order: deltas, one finish per choice, then end -------------
@dataclass
class Delta:
    index: int  # choice
    text: str  # new text of that choice (streaming requests only)


@dataclass
class Finish:
    index: int
    text: str  # the choice's whole text
    reason: str  # "stop" (end-of-text or a stop string) or "length" (max_tokens reached)


@dataclass
class End:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failure:
    message: str
    status: int = 500  # 422: the request asked for something impossible


Event = Delta | Finish | End | Failure


@dataclass(eq=False)
class Job:
    """One completion request: `prompts` x `settings.num_samples` rows, generated until each
    ends; its settings are the request's (`CompletionRequest.generation_config`)."""

    prompts: list[list[int]]
    settings: GenerationConfig
    stream: bool
    emit: Callable[[Event], None]  # called from the worker thread; must be thread-safe
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
    def key(self) -> tuple[object, ...]:
        """Jobs with equal keys share the logits processors, so they can share a batch."""
        return self.settings.processor_key()


@dataclass(eq=False)
class _Row:
    job: Job
    index: int
    ids: list[int] = field(default_factory=list)
    shown: str = ""  # text streamed so far
    text: str | None = None  # set once a stop string has cut it
    reason: str | None = None


@dataclass
class Stats:
    """Counters shown by GET /health (written by the worker thread only)."""

    batches: int = 0
    jobs: int = 0
    rows: int = 0
    largest_batch: int = 0  # most requests that shared one batch
    cancelled: int = 0  # requests whose generation stopped because the client left
    tokens: int = 0  # completion tokens of finished requests


class Engine:
    """One run's model behind the API: a language model (`run`) or a classifier."""

    def __init__(self, run: Run | Classifier, name: str | None = None) -> None:
        self.run = run
        self.name = name or Path(run.path).resolve().name
        self.tokenizer: Tokenizer = run.tokenizer
        self.block_size = run.config.model.block_size
        weights = Path(run.weights) if isinstance(run, Run) else Path(run.path)
        self.created = int(weights.stat().st_mtime) if weights.exists() else int(time.time())
        self.stats = Stats()

    @property
    def task(self) -> Literal["generate", "classify"]:
        return "classify" if isinstance(self.run, Classifier) else "generate"

    @property
    def model(self) -> GPT:
        if not isinstance(self.run, Run):
            raise GptkitError(f"{self.name} is a classifier run; it has no language model")
        return self.run.model

    @property
    def vocab_size(self) -> int:
        """Token ids a request may use: those both the tokenizer and the model know."""
        return min(self.tokenizer.vocab_size, self.model.transformer.wte.num_embeddings)

    def check_ids(self, ids: Iterable[int], what: str) -> None:
        """Token ids from a request: each must be in the vocabulary."""
        vocab = self.vocab_size
        for i in ids:
            if not 0 <= i < vocab:
                raise GptkitError(f"{what}: token id {i} is outside the vocabulary "
                                  f"[0, {vocab})")

    def encode_prompt(self, text: str | list[int] | None) -> list[int]:
        """A prompt's token ids (checked, when given as ids); None starts a fresh document at
        the end-of-text token."""
        if isinstance(text, list):
            self.check_ids(text, "prompt")
            return text
        eot = self.tokenizer.eot_id
        if text is None:
            if eot is None:
                raise GptkitError("this model's tokenizer has no end-of-text token to start "
                                  "from; give a prompt")
            return [eot]
        ids = self.tokenizer.encode(text)
        if not ids:
            raise GptkitError(f"prompt {text[:40]!r} encodes to no tokens; give other text")
        return ids

    # --- generation ---------------------------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> None:
        """Generate for `jobs` together; every job hears back, whatever goes wrong."""
        live = [job for job in jobs if not job.cancelled.is_set()]
        self.stats.cancelled += len(jobs) - len(live)
        if not live:
            return
        self.stats.batches += 1
        self.stats.jobs += len(live)
        self.stats.rows += sum(job.rows for job in live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        ended: set[Job] = set()
        try:
            self._generate(live, ended)
        except Exception as exc:  # a failure ends these requests, never the server
            user = isinstance(exc, GptkitError)
            failure = Failure(str(exc), 422) if user else Failure(
                f"generation failed ({type(exc).__name__}); the server log has the details")
            if not user:
                log.exception("generation failed")
            for job in live:
                if job not in ended:
                    job.emit(failure)

    def _generate(self, jobs: list[Job], ended: set[Job]) -> None:
        spans: list[tuple[Job, int, list[_Row]]] = []  # each job's first row and its rows
        at = 0
        for job in jobs:
            spans.append((job, at, [_Row(job, i) for i in range(job.rows)]))
            at += job.rows
        if len({job.n for job in jobs}) == 1:  # as `gptkit sample`: prompts x num_samples
            prompts = [p for job in jobs for p in job.prompts]
            num_samples = jobs[0].n
            groups = [(len(job.prompts), job.settings.seed) for job in jobs]
        else:  # different n: each row its own prompt, in the same order
            prompts = [p for job in jobs for p in job.prompts for _ in range(job.n)]
            num_samples = 1
            groups = [(job.rows, job.settings.seed) for job in jobs]
        # the jobs share the processors (Job.key); lengths, counts and seeds are the batch's
        shared = jobs[0].settings.replace(
            max_new_tokens=max(job.max_tokens for job in jobs), num_samples=num_samples,
            seed=None, stop=[])
        tokens = generate_tokens(self.model, prompts, shared, eot_id=self.tokenizer.eot_id,
                                 seed_groups=groups)
        live = {job: its_rows for job, _, its_rows in spans}
        try:
            for step, token in enumerate(tokens, start=1):
                values = token.tolist()
                for job, offset, its_rows in spans:
                    if job not in live:
                        continue
                    if job.cancelled.is_set():
                        del live[job]
                        ended.add(job)
                        self.stats.cancelled += 1
                        continue
                    for row, value in zip(its_rows, values[offset : offset + job.rows],
                                          strict=True):
                        self._advance(row, value, step)
                    if all(row.reason for row in its_rows):
                        self._end(job, its_rows, ended)
                        del live[job]
                if not live:
                    break
        finally:
            tokens.close()
        for job, its_rows in live.items():  # max_tokens 0, or every row ended at once
            for row in its_rows:
                if row.reason is None:
                    self._finish(row, "length")
            self._end(job, its_rows, ended)

    def _advance(self, row: _Row, token: int, step: int) -> None:
        """Take one new token of a row: end it, cut it at a stop string, or stream it."""
        job = row.job
        if row.reason is not None:
            return
        if token == self.tokenizer.eot_id:
            self._finish(row, "stop")
            return
        row.ids.append(token)
        if job.stream or job.stops:
            text = self.tokenizer.decode(row.ids)
            at = first_stop(text, job.stops)
            if at is not None:
                row.text = text[:at]
                self._finish(row, "stop")
                return
            if job.stream:
                self._show(row, text[: showable(text, job.stops)])
        if step >= job.max_tokens:
            self._finish(row, "length")

    def _show(self, row: _Row, text: str) -> None:
        if len(text) > len(row.shown) and text.startswith(row.shown):
            row.job.emit(Delta(row.index, text[len(row.shown) :]))
            row.shown = text

    def _finish(self, row: _Row, reason: str) -> None:
        if row.text is None:
            text = self.tokenizer.decode(row.ids) if row.ids else ""
            at = first_stop(text, row.job.stops)
            row.text = text if at is None else text[:at]
        if row.job.stream:
            self._show(row, row.text)
        row.reason = reason
        row.job.emit(Finish(row.index, row.text, reason))

    def _end(self, job: Job, rows: list[_Row], ended: set[Job]) -> None:
        ended.add(job)
        new = sum(len(row.ids) for row in rows)
        self.stats.tokens += new
        job.emit(End(prompt_tokens=sum(len(p) for p in job.prompts), completion_tokens=new))

    # --- attention maps and classification ----------------------------------------------------
    def attention(self, prompt: str, layer: int) -> dict[str, object]:
        """Every head's attention weights of `layer` on `prompt` (gptkit.viz.attention)."""
        from gptkit.viz.attention import attention_maps

        maps = attention_maps(self.model, self.tokenizer, prompt)
        if layer >= maps.n_layer:
            raise GptkitError(f"layer {layer} does not exist; the model has {maps.n_layer} "
                              f"layers (0 to {maps.n_layer - 1})")
        return {
            "tokens": maps.tokens, "layer": layer, "n_layer": maps.n_layer,
            "n_head": maps.n_head, "weights": maps.weights[layer].round(5).tolist(),
        }

    def classify(self, texts: list[str]) -> tuple[str, list[dict[str, object]]]:
        """(task, one result per text) as `gptkit classify` computes them."""
        classifier = self.run
        if not isinstance(classifier, Classifier):
            raise GptkitError(f"{self.name} is a language model; classification needs a run "
                              "written by gptkit finetune-classify")
        if classifier.task == "token":
            tagged = classifier.predict_tokens([text.split() for text in texts])
            return "token", [
                {"index": i, "words": [{"word": w.word, "tag": w.tag, "score": w.score}
                                       for w in words]}
                for i, words in enumerate(tagged)
            ]
        results = []
        for i, p in enumerate(classifier.predict(texts)):
            ranked = sorted(p.probabilities.items(), key=lambda item: -item[1])
            results.append({"index": i, "label": str(p.label), "score": p.score,
                            "scores": [{"label": k, "score": v} for k, v in ranked]})
        return "sequence", results
