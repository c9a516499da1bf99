"""The model side of the server: generation, attention maps and classification.

Everything here is synchronous and runs in the server's single worker thread, so the model is
never used by two threads at once. Completion requests (`Job`, one `GenerationConfig` each)
are queued with `submit` and decode together, joining and leaving at every step
(`gptkit.serve.stepper`: continuous batching over a preallocated KV pool of
`max_batch_size` rows, with prefix reuse); each request samples from a generator of its own
and sees only its own rows, so its text does not depend on what it ran beside. Text is cut
at stop strings and streamed as `sample_text` does it (held back while it could be the start
of a stop string or ends inside a UTF-8 character).

Log-probabilities (`Job.logprobs`) come as `TokenLogprob` records on the events: a Delta
carries those of the tokens whose text it carries, a Finish those of the whole choice (up to
the text kept before a stop string), a Prompt those of an echoed prompt (the raw model's).
`Job.keep` < n ranks the candidates (OpenAI's `best_of`) by mean token log-probability and
returns the best.

A guard (`gptkit.guard`, `gptkit serve --guard`) scores each finished choice, and a streamed
one a sentence at a time as it completes, its text held back until then: a choice that
crosses ends with finish_reason "content_filter", as OpenAI's, and keeps only the text
already streamed (none, unstreamed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.finetune.classifier import Classifier
from gptkit.generation.logprobs import (
    TokenLogprob,
    Top,
    prompt_logprobs,
    records,
    top_list,
)
from gptkit.generation.speculative import Speculative
from gptkit.generation.text import first_stop, showable
from gptkit.guard import OutputGuard, SentenceGate
from gptkit.model import GPT
from gptkit.run import Run
from gptkit.serve.jobs import (
    Delta,
    End,
    Failure,
    Finish,
    FirstToken,
    Job,
    Prompt,
    Stats,
)
from gptkit.serve.prefix import PrefixStore
from gptkit.serve.settings import DEFAULT_PREFIX_CACHE_MB
from gptkit.serve.speculate import SpeculativeStepper
from gptkit.serve.stepper import Listener, Stepper
from gptkit.tokenizers import Tokenizer

log = logging.getLogger("gptkit.serve")


@dataclass(eq=False)
class _Row:
    job: Job
    index: int
    ids: list[int] = field(default_factory=list)
    shown: str = ""  # text streamed so far
    text: str | None = None  # set once a stop string has cut it
    reason: str | None = None
    logprobs: list[float] = field(default_factory=list)  # of ids, when the job is scored
    tops: list[Top | None] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # text length after each id (logprobs)
    end_logprob: float | None = None  # of the end-of-text token that ended it
    sent: int = 0  # tokens whose records have been streamed
    finish: Finish | None = None  # held back while candidates are ranked
    gate: SentenceGate | None = None  # the guard's, when there is one

    def score(self) -> float:
        """best_of's ranking: mean log-probability of the kept tokens (and of the
        end-of-text token that ended the choice, if one did)."""
        kept = len(self.finish.tokens or []) if self.finish else len(self.ids)
        values = self.logprobs[:kept]
        if self.end_logprob is not None:
            values = [*values, self.end_logprob]
        return sum(values) / len(values) if values else 0.0


class Engine:
    """One run's model behind the API: a language model (`run`) or a classifier."""

    def __init__(self, run: Run | Classifier, name: str | None = None, *,
                 max_batch_size: int = 16, prefill_chunk: int = 64,
                 prefix_cache_mb: float | None = None, draft: Speculative | None = None,
                 guard: OutputGuard | None = None) -> None:
        """`max_batch_size`: rows (prompts x n) decoding together, the KV pool's slots;
        `prefill_chunk`: prompt tokens prefilled per step; `prefix_cache_mb`: the prefix
        store's budget (0: no prefix reuse; None: 256 MB; with a draft it holds the draft's
        KV too); `draft`: decode speculatively with this draft model
        (`gptkit.serve.speculate`; it must share the run's tokenizer); `guard`: withhold what
        crosses its threshold (`gptkit.guard`)."""
        self.run = run
        self.name = name or Path(run.path).resolve().name
        self.tokenizer: Tokenizer = run.tokenizer
        self.block_size = run.config.model.block_size
        weights = Path(run.weights) if isinstance(run, Run) else Path(run.path)
        self.created = int(weights.stat().st_mtime) if weights.exists() else int(time.time())
        self.stats = Stats()
        self.guard = guard
        self._rows: dict[Job, list[_Row]] = {}
        self._stepper: Stepper | None = None
        if isinstance(run, Run):
            listener = Listener(self._started, self._took, self._failed, self._cancelled,
                                self._empty)
            eot, model = self.tokenizer.eot_id, run.model
            budget = DEFAULT_PREFIX_CACHE_MB if prefix_cache_mb is None else prefix_cache_mb
            store = PrefixStore(int(budget * 2**20)) if budget else None
            if draft is not None:
                self._stepper = SpeculativeStepper(model, max_batch_size, draft, eot_id=eot,
                                                   prefill_chunk=prefill_chunk,
                                                   stats=self.stats, listener=listener,
                                                   store=store)
            else:
                self._stepper = Stepper(model, max_batch_size, eot_id=eot, stats=self.stats,
                                        prefill_chunk=prefill_chunk, listener=listener,
                                        store=store)
        elif draft is not None or guard is not None:
            raise GptkitError(f"{self.name} is a classifier run; a draft model or a guard acts "
                              "on generated text only: leave out --draft and --guard")

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
    @property
    def stepper(self) -> Stepper:
        if self._stepper is None:
            raise GptkitError(f"{self.name} is a classifier run; it does not generate")
        return self._stepper

    @property
    def busy(self) -> bool:
        """Whether jobs are queued or running."""
        return self._stepper is not None and self._stepper.busy

    @property
    def queued(self) -> int:
        return 0 if self._stepper is None else len(self._stepper.pending)

    def pool_info(self) -> dict[str, int] | None:
        """The KV pool's size (None for a classifier): rows, positions per row, bytes (and
        the draft's, with one)."""
        return None if self._stepper is None else self._stepper.pool_info()

    def submit(self, job: Job) -> None:
        """Queue a job (from any thread); `work` runs it. Its events arrive through
        `job.emit`."""
        self.stepper.submit(job)

    def work(self, budget_s: float = 0.05) -> bool:
        """Decoding steps for up to `budget_s` seconds (at least one); whether work is left.
        The server calls it in its worker thread, so attention maps and classifications
        queued there run between calls."""
        stepper = self.stepper
        end = time.monotonic() + budget_s
        try:
            while stepper.busy:
                stepper.step()
                if time.monotonic() >= end:
                    break
        except Exception as exc:  # a bug, not a request's fault: nobody may wait forever
            log.exception("a decoding step failed")
            stepper.abort(exc)
        return stepper.busy

    def run_batch(self, jobs: list[Job]) -> None:
        """Generate for `jobs` (they join together) until all have ended; every job hears
        back, whatever goes wrong."""
        for job in jobs:
            self.submit(job)
        while self.stepper.busy:
            self.stepper.step()

    def _started(self, job: Job) -> None:
        self.stats.jobs += 1
        self.stats.rows += job.rows
        self._rows[job] = [_Row(job, i) for i in range(job.rows)]
        if job.echo_logprobs:
            self._echo(job)

    def _took(self, job: Job, values: list[int], logprobs: Tensor | None,
              step: int) -> list[bool]:
        """A step's tokens of `job`'s rows: stream them, end rows; which rows have ended."""
        rows = self._rows[job]
        if step == 1 and not job.stream:  # streamed jobs hear of it as their first Delta
            job.emit(FirstToken())
        chosen: list[float] = []
        top_values: list[list[float]] = []
        top_ids: list[list[int]] = []
        if logprobs is not None:
            token = torch.tensor(values, device=logprobs.device)
            chosen = logprobs.gather(1, token[:, None]).squeeze(1).tolist()
            if job.logprobs:
                top = logprobs.topk(min(job.logprobs, logprobs.size(-1)), dim=-1)
                top_values, top_ids = top.values.tolist(), top.indices.tolist()
        for r, row in enumerate(rows):
            if row.reason is not None:
                continue
            if job.scored:
                row.logprobs.append(chosen[r])
                want = job.logprobs
                row.tops.append(None if want is None else [] if want == 0 else
                                top_list(top_values[r], top_ids[r], self.tokenizer.decode))
            self._advance(row, values[r], step)
        ended = [row.reason is not None for row in rows]
        if all(ended):
            self._end(job, rows)
        return ended

    def _empty(self, job: Job) -> None:
        """max_tokens 0: every row ends at once."""
        rows = self._rows[job]
        for row in rows:
            self._finish(row, "length")
        self._end(job, rows)

    def _failed(self, job: Job, exc: Exception) -> None:
        """A failure ends its requests, never the server."""
        self._rows.pop(job, None)
        if isinstance(exc, GptkitError):
            job.emit(Failure(str(exc), 422))
            return
        log.error("generation failed", exc_info=exc)
        job.emit(Failure(f"generation failed ({type(exc).__name__}); the server log has the "
                         "details"))

    def _cancelled(self, job: Job) -> None:
        self._rows.pop(job, None)
        self.stats.cancelled += 1

    def _advance(self, row: _Row, token: int, step: int) -> None:
        """Take one new token of a row: end it, cut it at a stop string, or stream it."""
        job = row.job
        if row.reason is not None:
            return
        if token == self.tokenizer.eot_id:
            if row.logprobs:
                row.end_logprob = row.logprobs.pop()
                row.tops.pop()
            self._finish(row, "stop")
            return
        row.ids.append(token)
        text = ""
        if job.stream or job.stops or job.scored:
            text = self.tokenizer.decode(row.ids)
        if job.scored:
            row.ends.append(len(text))
        if job.stream or job.stops:
            at = first_stop(text, job.stops)
            if at is not None:
                row.text = text[:at]
                self._finish(row, "stop")
                return
            if job.stream:
                shown = self._released(row, text[: showable(text, job.stops)])
                if shown is None:
                    self._finish(row, "content_filter")
                    return
                self._show(row, shown)
        if step >= job.max_tokens:
            self._finish(row, "length")

    def _released(self, row: _Row, text: str) -> str | None:
        """What of a streamed choice's `text` may be sent: all of it, or under a guard its
        complete sentences that passed; None once one has crossed."""
        if self.guard is None:
            return text
        row.gate = row.gate or self.guard.gate()
        end = row.gate.release(text)
        return None if end is None else text[:end]

    def _show(self, row: _Row, text: str, final: bool = False) -> None:
        """Stream `text` (the choice's text so far) and the records of the tokens it now
        holds whole (all that are kept, when `final`)."""
        grew = len(text) > len(row.shown) and text.startswith(row.shown)
        tokens: list[TokenLogprob] | None = None
        if row.job.logprobs is not None:
            shown = text if grew else row.shown
            upto = len(self._records(row, shown)) if final else sum(
                1 for end in row.ends if end <= len(shown))
            tokens = self._records(row, shown, row.sent, upto)
            row.sent = max(row.sent, upto)
        if grew or tokens:
            row.job.emit(Delta(row.index, text[len(row.shown) :] if grew else "", tokens))
            if grew:
                row.shown = text

    def _records(self, row: _Row, text: str, start: int = 0,
                 stop: int | None = None) -> list[TokenLogprob]:
        """The records of the tokens of `row` (from `start` to `stop`) that `text` (its text,
        perhaps cut at a stop string) holds at least in part."""
        ids = row.ids
        if row.ends and row.ends[-1] > len(text):  # cut: the tokens that start before the cut
            ids = [t for t, at in zip(ids, [0, *row.ends], strict=False) if at < len(text)]
        ids = ids[start:stop]
        end = start + len(ids)
        offsets = [0, *row.ends][start:end] if row.ends else None
        return records(ids, row.logprobs[start:end], row.tops[start:end], self.tokenizer.decode,
                       offsets)

    def _finish(self, row: _Row, reason: str) -> None:
        if row.text is None:
            text = self.tokenizer.decode(row.ids) if row.ids else ""
            at = first_stop(text, row.job.stops)
            row.text = text if at is None else text[:at]
        job = row.job
        if self.guard is not None and (reason == "content_filter" or not (
                row.gate or self.guard.gate()).finish(row.text)):
            row.text, reason = row.shown, "content_filter"  # withheld: what was sent stays
            self.stats.withheld += 1
        if job.stream and not job.ranks:
            self._show(row, row.text, final=True)
        row.reason = reason
        tokens = self._records(row, row.text) if job.scored else None
        row.finish = Finish(row.index, row.text, reason, tokens)
        if not job.ranks:
            job.emit(row.finish)

    def _end(self, job: Job, rows: list[_Row]) -> None:
        self._rows.pop(job, None)
        if job.ranks:  # best_of: each prompt's best `keep` rows, best first
            assert job.keep is not None
            for p in range(len(job.prompts)):
                mine = rows[p * job.n : (p + 1) * job.n]
                best = sorted(mine, key=lambda row: -row.score())[: job.keep]
                for i, row in enumerate(best):
                    assert row.finish is not None
                    row.finish.index = p * job.keep + i
                    job.emit(row.finish)
        new = sum(len(row.ids) for row in rows)
        self.stats.tokens += new
        job.emit(End(prompt_tokens=sum(len(p) for p in job.prompts), completion_tokens=new))

    def _echo(self, job: Job) -> None:
        """The Prompt events of an echoing job: its prompts' tokens under the raw model."""
        decode = self.tokenizer.decode
        k = job.logprobs or 0
        for p, ids in enumerate(job.prompts):
            chosen, tops = prompt_logprobs(self.model, ids, k)
            named: list[Top | None] = [None]
            named += [[(i, decode([i]), v) for i, _, v in top] for top in tops]
            job.emit(Prompt(p, records(ids, [None, *chosen], named, decode)))

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
