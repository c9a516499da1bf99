"""Guarded outputs: a trained classifier run scores generated answers, and those whose
probability of one label reaches a threshold are regenerated or withheld.

One owner for `gptkit sample`, `gptkit chat` and `gptkit serve` (`--guard RUN --guard-label
L --threshold T`): `OutputGuard.load` opens a sequence classifier run (`gptkit finetune-classify`)
once, `OutputGuard.check` scores a text through the classifier's own path
(`Classifier.predict`, as `gptkit classify` does), and the decision is `P(L) >= T`.

Finished answers are scored whole. A streamed answer is released sentence by sentence: its
text is held back until a sentence completes, then the answer so far (not the sentence
alone) is scored, and on a crossing the stream stops before that sentence, which is never
sent (`SentenceGate`). Scoring the answer so far gives the classifier the context it was
trained with (whole texts, not fragments), and it makes a stream's last check the very check
a finished answer gets, so streaming never lets through an answer that would have been
withheld unstreamed. A sentence ends at a newline, or at `.`, `!` or `?` (a run of them)
followed by whitespace; the end of the answer ends its last sentence. Only the generated
text is scored, never the prompt; an empty answer has nothing to withhold and passes.
Past the classifier's context, its `classify.long_inputs` says what it reads (truncate: the
beginning; chunk: all of it).

Regenerating draws a new sample, which only random sampling can make different: with greedy
decoding (or plain beam search) the same text would come back, so it is withheld at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptkit.errors import GptkitError

# the end of a sentence: a newline, or .!? (a run of them) before whitespace
BOUNDARY = re.compile(r"[.!?]+(?=\s)|\n")


def sentence_end(text: str) -> int:
    """Where the last complete sentence of a growing `text` ends (0: none yet)."""
    ends = [m.end() for m in BOUNDARY.finditer(text)]
    return ends[-1] if ends else 0


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise GptkitError(f"--threshold must be a probability in [0, 1] (got {threshold}); "
                          "e.g. --threshold 0.5")


@dataclass(frozen=True)
class Verdict:
    """A text's probability of the guard's label, and whether it reaches the threshold."""

    score: float
    crossed: bool


class OutputGuard:
    """Scores texts by `score` (the probability of `label`) against `threshold` in [0, 1];
    `name` is the classifier run as the user named it (for messages)."""

    def __init__(self, score: Callable[[str], float], label: str, threshold: float,
                 name: str = "the guard") -> None:
        check_threshold(threshold)
        self._score = score
        self.label = label
        self.threshold = threshold
        self.name = name

    @classmethod
    def load(cls, run: str | Path, label: str, threshold: float, device: str = "cpu"
             ) -> OutputGuard:
        """The guard of classifier run `run` for `label`: loaded once, checked first (not a
        sequence classifier, an unknown label and a bad threshold are one-line errors)."""
        from gptkit.run import load_run

        check_threshold(threshold)  # before loading anything
        classifier = load_run(run, device=device).classifier
        if classifier is None:
            raise GptkitError(f"--guard {run} is not a classifier run (no labels.json); train "
                              "one with gptkit finetune-classify")
        if classifier.task != "sequence":
            raise GptkitError(f"--guard {run} tags words (classify.task=token); a guard needs "
                              "a classifier of whole texts (classify.task=sequence)")
        labels = [str(lab) for lab in classifier.labels]
        if label not in labels:
            raise GptkitError(f"--guard-label {label!r} is not a label of {run}; its labels "
                              f"are {', '.join(labels)}")

        def score(text: str) -> float:
            return classifier.predict([text])[0].probabilities[label]

        return cls(score, label, threshold, str(run))

    def check(self, text: str) -> Verdict:
        """Score `text`; an empty (or blank) text passes unscored."""
        if not text.strip():
            return Verdict(0.0, False)
        score = self._score(text)
        return Verdict(score, score >= self.threshold)

    def why(self, verdict: Verdict) -> str:
        """`P(label) = 0.93 >= 0.50`: what a crossing verdict says."""
        return f"P({self.label}) = {verdict.score:.2f} >= {self.threshold:g}"

    def gate(self) -> SentenceGate:
        """A gate for one streamed answer."""
        return SentenceGate(self)


class SentenceGate:
    """Releases a streamed answer one complete, scored sentence at a time.

    `release(text)` takes the answer so far and says how much of it may be shown (up to its
    last scored sentence), or None once a sentence has crossed: the stream stops there.
    `finish(text)` scores the whole finished answer (unless its last sentence already was):
    whether all of it may be shown. `verdict` is the crossing one, when a text crossed."""

    def __init__(self, guard: OutputGuard) -> None:
        self.guard = guard
        self.cleared = 0  # characters of the answer scored and released
        self.verdict: Verdict | None = None

    @property
    def crossed(self) -> bool:
        return self.verdict is not None

    def release(self, text: str) -> int | None:
        if self.verdict is not None:
            return None
        end = sentence_end(text)
        if end > self.cleared and not self._passes(text[:end]):
            return None
        self.cleared = max(self.cleared, end)
        return self.cleared

    def finish(self, text: str) -> bool:
        if self.verdict is not None:
            return False
        if len(text) > self.cleared and not self._passes(text):
            return False
        self.cleared = len(text)
        return True

    def _passes(self, text: str) -> bool:
        verdict = self.guard.check(text)
        if verdict.crossed:
            self.verdict = verdict
        return not verdict.crossed


@dataclass
class Outcome:
    """A guarded finished answer: the text to show ("" when withheld), how many times it was
    regenerated, and the crossing verdict when it was withheld."""

    text: str
    regenerated: int = 0
    withheld: Verdict | None = None


def guarded(guard: OutputGuard, answer: str, regenerate: Callable[[int], str] | None,
            retries: int) -> Outcome:
    """Check a finished `answer`; while it crosses, `regenerate(attempt)` (1, 2, ...) a new
    one, up to `retries` times (None: it cannot differ, e.g. greedy decoding), then withhold
    it."""
    verdict = guard.check(answer)
    attempt = 0
    while verdict.crossed and regenerate is not None and attempt < retries:
        attempt += 1
        answer = regenerate(attempt)
        verdict = guard.check(answer)
    if verdict.crossed:
        return Outcome("", attempt, verdict)
    return Outcome(answer, attempt)


def note(guard: OutputGuard, outcome: Outcome, what: str,
         deterministic: bool = False) -> str | None:
    """The line telling what the guard did to `what` (e.g. "sample 2"), None if nothing."""
    if outcome.withheld is not None:
        tries = (f" after {outcome.regenerated} regeneration"
                 f"{'s' if outcome.regenerated != 1 else ''}" if outcome.regenerated else "")
        same = ("; not regenerated: greedy decoding would give the same text"
                if deterministic else "")
        return (f"(guard: {what} withheld{tries}, {guard.why(outcome.withheld)} by "
                f"{guard.name}{same})")
    if outcome.regenerated:
        times = "once" if outcome.regenerated == 1 else f"{outcome.regenerated} times"
        return f"(guard: {what} regenerated {times}; the one shown is below the threshold)"
    return None
