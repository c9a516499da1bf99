"""Guarded outputs (`gptkit.guard`, `--guard` on `gptkit sample` and `gptkit chat`): sentences
held back until scored, regeneration then withholding, the notes saying which, and every bad
input. The guard is a classifier trained in the tests (`guard_run`); its scores on a tiny
model's noise are arbitrary, so thresholds come from measured scores: 0 (everything
crosses), 1 (nothing does) or between two texts' scores (the decision flips)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from gptkit.chat import ChatSession
from gptkit.chat_template import default_chat_template, read_chat_template
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.guard import OutputGuard, SentenceGate, guarded, sentence_end
from gptkit.run import load_run
from tests.test_chat_cli import write_run
from tests.test_cli import expect_error, run_cli


def counting(limit: int) -> OutputGuard:
    """A stand-in guard: P = 1 once the text holds `limit` newlines."""
    def score(text: str) -> float:
        return 1.0 if text.count("\n") >= limit else 0.0
    return OutputGuard(score, "flagged", 0.5, "counting")


def first_lines(text: str) -> str:
    """What a stream under `counting(2)` releases of `text`: its sentences before the second
    newline (that one completes the sentence that crosses)."""
    second = text.index("\n", text.index("\n") + 1)
    return text[: sentence_end(text[:second])]


@pytest.fixture(scope="module")
def guard(guard_run: Path) -> OutputGuard:
    return OutputGuard.load(guard_run, "flagged", 0.5)


# --- sentences and the gate ------------------------------------------------------------------
@pytest.mark.parametrize("text, end", [
    ("", 0), ("no end yet", 0), ("One. Two", 4), ("Wait... what? ok", 13), ("3.14 is pi", 0),
    ("line\nnext", 5), ("Done!", 0), ("Done! ", 5), ("a.\n", 3)])
def test_a_sentence_ends_at_a_newline_or_at_punctuation_before_whitespace(text, end):
    assert sentence_end(text) == end


def test_the_gate_releases_scored_sentences_and_never_the_one_that_crossed():
    gate = SentenceGate(counting(2))
    assert gate.release("First") == 0  # held: the sentence is not complete
    assert gate.release("First one.\nSec") == 11
    assert gate.release("First one.\nSecond one.\nThird") is None  # two newlines: crosses
    assert gate.crossed and gate.verdict is not None and gate.verdict.score == 1.0
    assert gate.release("First one.\nSecond one.\nThird.") is None and not gate.finish("x")
    assert gate.cleared == 11  # what was released stays; the rest is withheld
    passing = SentenceGate(counting(3))
    assert passing.release("One. Two") == 4 and passing.finish("One. Two") and \
        passing.cleared == len("One. Two")
    assert not SentenceGate(counting(1)).finish("no end, but the finished answer has one.\n")


def test_regenerate_until_below_the_threshold_then_withhold():
    scores = {"bad": 0.9, "worse": 0.95, "fine": 0.1}
    guard = OutputGuard(scores.__getitem__, "flagged", 0.5)
    answers = iter(["worse", "fine"])
    outcome = guarded(guard, "bad", lambda attempt: next(answers), retries=2)
    assert (outcome.text, outcome.regenerated, outcome.withheld) == ("fine", 2, None)
    outcome = guarded(guard, "bad", lambda attempt: "worse", retries=2)
    assert outcome.text == "" and outcome.regenerated == 2 and outcome.withheld.score == 0.95
    outcome = guarded(guard, "bad", None, retries=5)  # greedy: never retried
    assert outcome.regenerated == 0 and outcome.withheld.score == 0.9
    assert guarded(guard, "   ", None, 0).withheld is None  # nothing to withhold


# --- the classifier --------------------------------------------------------------------------
def test_the_guard_scores_as_gptkit_classify_and_its_decision_flips_at_the_threshold(
        guard_run, guard):
    classifier = load_run(guard_run).classifier
    texts = ["thou art my love", "the king of night"]
    scores = [guard.check(t).score for t in texts]
    for text, score in zip(texts, scores, strict=True):
        assert score == pytest.approx(
            classifier.predict([text])[0].probabilities["flagged"], abs=1e-6)
    assert scores[0] != scores[1]
    low, high = sorted(scores)
    between = OutputGuard.load(guard_run, "flagged", (low + high) / 2)
    assert [between.check(t).crossed for t in texts] == [s == high for s in scores]
    assert all(OutputGuard.load(guard_run, "flagged", 0.0).check(t).crossed for t in texts)
    assert not any(OutputGuard.load(guard_run, "flagged", 1.0).check(t).crossed for t in texts)


def test_a_guard_must_be_a_sequence_classifier_with_that_label(guard_run, tiny_run, tmp_path):
    with pytest.raises(GptkitError, match="not a classifier run"):
        OutputGuard.load(tiny_run, "flagged", 0.5)
    with pytest.raises(GptkitError, match="its labels are flagged, ok"):
        OutputGuard.load(guard_run, "toxic", 0.5)
    for threshold in (-0.1, 1.5):
        with pytest.raises(GptkitError, match=r"in \[0, 1\]"):
            OutputGuard.load(guard_run, "flagged", threshold)
    tagger = tmp_path / "tagger"  # the same weights read as a token classifier
    shutil.copytree(guard_run, tagger)
    for name in ("config.yaml", "labels.json"):  # where the run says what it does
        text = (tagger / name).read_text()
        (tagger / name).write_text(text.replace("task: sequence", "task: token")
                                   .replace('"task": "sequence"', '"task": "token"'))
    assert load_run(tagger).classifier.task == "token"
    with pytest.raises(GptkitError, match="classify.task=sequence"):
        OutputGuard.load(tagger, "flagged", 0.5)


# --- gptkit sample ---------------------------------------------------------------------------
def sample(capsys, tiny_run, *more: str) -> tuple[int, str, str]:
    return run_cli(capsys, "sample", str(tiny_run), "--prompt", "ROMEO:", "--max-new-tokens",
                   "30", *more)


def test_sample_regenerates_then_withholds_and_says_so(capsys, tiny_run, guard_run):
    guarded_by = ["--guard", str(guard_run), "--guard-label", "flagged"]
    code, out, err = sample(capsys, tiny_run, "--seed", "1", *guarded_by, "--threshold", "0")
    assert code == 0 and out.strip() == "ROMEO:"  # the prompt stays, the text is withheld
    assert "sample 1 withheld after 2 regenerations, P(flagged) = " in err
    code, out, err = sample(capsys, tiny_run, "--seed", "1", *guarded_by, "--threshold", "0",
                            "--guard-retries", "0")
    assert out.strip() == "ROMEO:" and "sample 1 withheld, P(flagged)" in err
    code, out, err = sample(capsys, tiny_run, "--temperature", "0", *guarded_by,
                            "--threshold", "0", "--no-repeat-ngram-size", "1")  # not blank
    assert out.strip() == "ROMEO:" and "not regenerated: greedy decoding" in err
    plain = sample(capsys, tiny_run, "--seed", "1")[1]
    code, out, err = sample(capsys, tiny_run, "--seed", "1", *guarded_by, "--threshold", "1")
    assert out == plain and "guard" not in err


def test_sample_shows_the_regenerated_text_when_it_passes(capsys, tiny_run, guard_run, guard):
    """Seeds s (the sample) and s + 1 (its first regeneration) whose scores differ: with a
    threshold between them the first crosses and the second is shown. --bad-words still
    bans its exact sequences, in the regenerated text too."""
    for seed in range(1, 20):
        first, second = (sample(capsys, tiny_run, "--seed", str(s), "--bad-words", "e")[1]
                         .rstrip("\n") for s in (seed, seed + 1))
        a, b = (guard.check(t[len("ROMEO:"):]).score for t in (first, second))
        if a > b:
            break
    else:
        pytest.fail("no seed whose regeneration scores lower")
    code, out, err = sample(capsys, tiny_run, "--seed", str(seed), "--guard", str(guard_run),
                            "--guard-label", "flagged", "--threshold", str((a + b) / 2),
                            "--bad-words", "e")
    assert out.rstrip("\n") == second and "e" not in second[len("ROMEO:"):]
    assert "sample 1 regenerated once" in err


def test_streamed_samples_stop_before_the_sentence_that_crosses(capsys, tiny_run, guard_run):
    guarded_by = ["--guard", str(guard_run), "--guard-label", "flagged", "--stream"]
    plain = sample(capsys, tiny_run, "--seed", "3", "--num-samples", "2")[1]
    code, out, err = sample(capsys, tiny_run, "--seed", "3", "--num-samples", "2",
                            *guarded_by, "--threshold", "1")
    assert out.rstrip("\n") == plain.rstrip("\n") and "guard" not in err
    code, out, err = sample(capsys, tiny_run, "--seed", "3", *guarded_by, "--threshold", "0")
    assert out.strip() == "ROMEO:" and "the rest of sample 1 withheld" in err


@pytest.mark.parametrize("argv, match", [
    (["--guard-label", "flagged"], "--guard-label needs --guard RUN"),
    (["--threshold", "0.3"], "--threshold needs --guard RUN"),
    (["--guard-retries", "1"], "--guard-retries needs --guard RUN"),
    (["--guard", "GUARD"], "--guard needs --guard-label"),
    (["--guard", "GUARD", "--guard-label", "toxic"], "its labels are flagged, ok"),
    (["--guard", "GUARD", "--guard-label", "flagged", "--threshold", "1.5"], "in [0, 1]"),
    (["--guard", "GUARD", "--guard-label", "flagged", "--guard-retries", "-1"], ">= 0"),
    (["--guard", "TINY", "--guard-label", "flagged"], "not a classifier run"),
])
def test_bad_guard_options_are_one_line_errors(capsys, tiny_run, chat_run, guard_run, argv,
                                               match):
    argv = [{"GUARD": str(guard_run), "TINY": str(tiny_run)}.get(a, a) for a in argv]
    expect_error(capsys, "sample", str(tiny_run), *argv, match=match)
    expect_error(capsys, "chat", str(chat_run), *argv, match=match)


# --- gptkit chat -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("guarded-chat") / "run", default_chat_template())


def session(path: Path, guard: OutputGuard | None, retries: int = 2,
            **settings: object) -> ChatSession:
    run = load_run(path)
    config = GenerationConfig(**{"max_new_tokens": 60, "temperature": 1.0, "seed": 5, **settings})
    return ChatSession(run.model, run.tokenizer, read_chat_template(path), config,
                       guard=guard, retries=retries)


def test_a_chat_reply_is_regenerated_then_withheld(chat_run, guard_run):
    everything = OutputGuard.load(guard_run, "flagged", 0.0)
    chat = session(chat_run, everything)
    pieces: list[str] = []
    reply = chat.reply("Hello!", stream=pieces.append)
    assert reply.text == "" and pieces == [] and reply.regenerated == 2
    assert reply.withheld is not None and chat.replies == 3  # three answers drawn
    assert chat.history[-1] == {"role": "assistant", "content": ""}
    greedy = session(chat_run, everything, temperature=0.0)
    assert greedy.reply("Hello!").regenerated == 0 and greedy.replies == 1
    nothing = session(chat_run, OutputGuard.load(guard_run, "flagged", 1.0))
    assert nothing.reply("Hello!") == session(chat_run, None).reply("Hello!")


def test_a_streamed_chat_reply_ends_before_the_sentence_that_crosses(chat_run):
    newline = load_run(chat_run).tokenizer.encode("\n")[0]
    free = session(chat_run, None, logit_bias={newline: 4.0}).reply("Hi")
    assert free.text.count("\n") >= 2, "the newline bias should give several lines"
    chat = session(chat_run, counting(2), logit_bias={newline: 4.0})
    pieces: list[str] = []
    reply = chat.reply("Hi", stream=pieces.append)
    assert "".join(pieces) == reply.text == first_lines(free.text) != ""
    assert reply.withheld is not None
    assert reply.regenerated == 0  # a sentence was shown: too late to regenerate


def test_chat_cli_notes_what_the_guard_did(capsys, monkeypatch, chat_run, guard_run):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello!\n"))
    code, out, err = run_cli(capsys, "chat", str(chat_run), "--guard", str(guard_run),
                             "--guard-label", "flagged", "--threshold", "0", "--seed", "1",
                             "--max-new-tokens", "20", "--guard-retries", "1")
    assert code == 0 and out.strip() == ""
    assert "the reply withheld after 1 regeneration, P(flagged)" in err
