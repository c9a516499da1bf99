"""Speculative decoding (`gptkit.generation.speculative`): greedy output identical to the main
model's alone, sampled output distributed as the main model's (checked against the exact
distribution by a chi-square test that a wrong scheme fails), stops, limits and errors, and
`--draft` of `gptkit sample` and `gptkit chat`."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.generation import speculative as spec
from gptkit.generation.config import GenerationConfig
from gptkit.generation.decoding import processors_for
from gptkit.generation.sampling import generate_tokens
from gptkit.generation.speculative import (
    Speculative,
    SpeculativeStats,
    accept,
    speculative_tokens,
)
from gptkit.generation.text import sample_text
from gptkit.model import GPT
from tests.test_chat_cli import write_run
from tests.test_cli import expect_error, run_cli


def tiny(seed: int, vocab: int = 11, block: int = 24, layers: int = 2, sharp: float = 1.0,
         dtype: torch.dtype = torch.float64) -> GPT:
    """A random model; `sharp` scales its output layer so that its distributions are peaked
    (at initialisation they are nearly uniform, which any scheme would reproduce)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=layers, n_head=2, n_embd=16, block_size=block,
                            vocab_size=vocab, tie_embeddings=False)).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharp)
    return model


def perturbed(model: GPT, scale: float, seed: int = 1) -> GPT:
    """A copy of `model` with noise on every weight: a draft that often, not always, agrees."""
    torch.manual_seed(seed)
    copy = GPT(model.config).to(model.lm_head.weight.dtype).eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(torch.randn_like(p) * scale)
    return copy


def tokens(gen) -> list[list[int]]:
    return torch.stack(list(gen), dim=1).tolist()


MAIN = tiny(0, sharp=20.0)
DRAFT = perturbed(MAIN, 0.2)


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2, 3], [4, 5]], [7]])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_output_is_the_main_models_token_for_token(prompt, k):
    settings = GenerationConfig(temperature=0, max_new_tokens=30)  # slides past block 24
    alone = tokens(generate_tokens(MAIN, prompt, settings))
    stats = SpeculativeStats()
    out = tokens(speculative_tokens(MAIN, DRAFT, prompt, settings, draft_tokens=k, stats=stats))
    assert out == alone
    assert 0 < stats.accepted < stats.proposed  # the draft both agreed and disagreed
    assert stats.steps == 30 and stats.plain > 0  # past the window: decoded plainly


def test_a_draft_equal_to_the_model_is_always_accepted():
    settings = GenerationConfig(temperature=0, max_new_tokens=16)
    stats = SpeculativeStats()
    out = tokens(speculative_tokens(MAIN, MAIN, [1, 2], settings, draft_tokens=4, stats=stats))
    assert out == tokens(generate_tokens(MAIN, [1, 2], settings))
    assert stats.accepted == stats.proposed > 0 and stats.plain == 0
    # 16 tokens: a prompt pass, then passes of 5 tokens (4 drafted + the model's own)
    assert stats.passes == 1 + 4 and stats.tokens_per_pass == 16 / 5
    assert "accepted (100%)" in stats.summary()


def test_greedy_with_processors_drafts_of_other_shapes_and_sampled_samples():
    """Penalties see the drafted tokens; a draft may be smaller, shorter-context, fp32, and
    have a padded vocabulary; several samples of one prompt decode together."""
    settings = GenerationConfig(temperature=0, max_new_tokens=20, repetition_penalty=1.5,
                                no_repeat_ngram_size=2, num_samples=2)
    small = tiny(5, vocab=13, block=12, layers=1, sharp=5.0, dtype=torch.float32)
    for prompt in ([3, 4], list(range(1, 11)) * 2):  # the second outgrows the draft's 12
        alone = tokens(generate_tokens(MAIN, prompt, settings))
        stats = SpeculativeStats()
        assert tokens(speculative_tokens(MAIN, small, prompt, settings, stats=stats)) == alone
        assert (stats.plain == 20) == (len(prompt) > 12)


def test_stops_at_end_of_text_and_max_new_tokens_as_plain_decoding():
    settings = GenerationConfig(temperature=0, max_new_tokens=12)
    alone = tokens(generate_tokens(MAIN, [1, 2, 3], settings))
    eot = alone[0][5]  # a token the model writes: made the end-of-text token
    for prompt in ([1, 2, 3], [[1, 2, 3], [2, 9]]):
        plain = tokens(generate_tokens(MAIN, prompt, settings, eot_id=eot))
        assert tokens(speculative_tokens(MAIN, DRAFT, prompt, settings, eot_id=eot)) == plain
    for n in (1, 2, 7):
        short = settings.replace(max_new_tokens=n)
        assert tokens(speculative_tokens(MAIN, DRAFT, [1, 2, 3], short)) == \
            [alone[0][:n]]
    assert list(speculative_tokens(MAIN, DRAFT, [1], settings.replace(max_new_tokens=0))) == []


def test_beam_search_and_bad_draft_tokens_are_refused():
    with pytest.raises(GptkitError, match="beam search"):
        list(speculative_tokens(MAIN, DRAFT, [1], GenerationConfig(num_beams=2)))
    with pytest.raises(GptkitError, match="draft_tokens"):
        list(speculative_tokens(MAIN, DRAFT, [1], GenerationConfig(), draft_tokens=0))
    with pytest.raises(GptkitError, match="draft tokens"):
        Speculative(DRAFT, tokens=0)


# -- sampling: the accept/reject scheme against exact distributions -------------------------

def chi_square(counts: Counter, expected: dict, n: int) -> float:
    """Pearson's statistic, cells expected fewer than 5 times pooled into one."""
    stat, pooled_seen, pooled_expected = 0.0, 0, 0.0
    for cell, prob in expected.items():
        e = prob * n
        if e < 5:
            pooled_seen, pooled_expected = pooled_seen + counts[cell], pooled_expected + e
        else:
            stat += (counts[cell] - e) ** 2 / e
    unexpected = sum(c for cell, c in counts.items() if cell not in expected)
    pooled_seen += unexpected
    if pooled_expected > 0:
        stat += (pooled_seen - pooled_expected) ** 2 / pooled_expected
    elif unexpected:
        stat = float("inf")
    return stat


# chi-square critical values at p = 0.001 are about df + 3.1 sqrt(2 df) + 10; 64 cells or
# fewer: below 110. The tests are seeded, so they pass or fail the same way every time.
LIMIT = 110.0


def test_accept_reproduces_the_target_distribution_and_a_wrong_scheme_does_not():
    """Two drafted positions over a vocabulary of 4, 20,000 rows at once: each row keeps
    some draft tokens, then the token `accept` draws; completed by plain draws from the
    target where the round ended early, the first three tokens follow the target's joint
    distribution. Keeping every draft token (the draft's distribution) fails the test."""
    torch.manual_seed(0)
    vocab, rows = 4, 20_000
    # target and draft scores given the prefix: p1(x1), p2(x2 | x1), p3(x3 | x1, x2)
    p_logits = [torch.randn(vocab) * 2, torch.randn(vocab, vocab) * 2,
                torch.randn(vocab, vocab, vocab) * 2]
    q_logits = [torch.randn(vocab) * 2, torch.randn(vocab, vocab) * 2]
    g = torch.Generator().manual_seed(1)

    def draw(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)

    x1 = draw(q_logits[0].expand(rows, -1))
    x2 = draw(q_logits[1][x1])
    drafted = torch.stack([x1, x2], dim=1)
    p_scores = torch.stack([p_logits[0].expand(rows, -1), p_logits[1][x1],
                            p_logits[2][x1, x2]], dim=1)
    q_scores = torch.stack([q_logits[0].expand(rows, -1), q_logits[1][x1]], dim=1)
    kept, token = accept(p_scores, q_scores, drafted, greedy=False, groups=[(rows, g)])
    first = torch.where(kept >= 1, x1, token)
    second = torch.where(kept >= 2, x2, torch.where(kept == 1, token,
                                                    draw(p_logits[1][first])))
    third = torch.where(kept == 2, token, draw(p_logits[2][first, second]))
    out = Counter(zip(first.tolist(), second.tolist(), third.tolist(), strict=True))
    p1, p2, p3 = (logits.softmax(-1) for logits in p_logits)
    expected = {(a, b, c): float(p1[a] * p2[a, b] * p3[a, b, c])
                for a, b, c in itertools.product(range(vocab), repeat=3)}
    assert chi_square(out, expected, rows) < LIMIT
    assert 0 < int((kept == 2).sum()) < rows and int((kept == 0).sum()) > 0
    wrong = Counter(zip(x1.tolist(), x2.tolist(), token.tolist(), strict=True))
    assert chi_square(wrong, expected, rows) > 10 * LIMIT


def exact_first_tokens(model: GPT, prompt: list[int], settings: GenerationConfig,
                       n: int) -> dict[tuple[int, ...], float]:
    """The main model's exact probability of each sequence of its first `n` tokens, under
    `settings`' processors (the distribution plain sampling draws from)."""
    vocab = model.config.vocab_size or 0
    start = torch.tensor([prompt])
    processors = processors_for(settings, start, None, None)
    out: dict[tuple[int, ...], float] = {(): 1.0}
    with torch.no_grad():
        for _ in range(n):
            grown: dict[tuple[int, ...], float] = {}
            for prefix, prob in out.items():
                seq = torch.tensor([prompt + list(prefix)])
                probs = processors(seq, model(seq)[0][:, -1].double()).softmax(-1)[0]
                for x in range(vocab):
                    if probs[x] > 0:
                        grown[(*prefix, x)] = prob * float(probs[x])
            out = grown
    return out


SAMPLED = GenerationConfig(temperature=0.9, top_k=6, repetition_penalty=1.3,
                           max_new_tokens=2, num_samples=4000, seed=7)


@pytest.mark.parametrize("draft", ["perturbed", "same", "other"])
def test_sampled_tokens_follow_the_main_models_distribution(draft):
    """The first two tokens of 4,000 seeded samples, decoded speculatively as rows of one
    batch, against the main model's exact distribution; plain sampling passes the same test,
    and a scheme that keeps every draft token fails it (test below)."""
    main = tiny(3, vocab=7, sharp=6.0)
    drafts = {"perturbed": perturbed(main, 0.3), "same": main, "other": tiny(4, vocab=7,
                                                                              sharp=6.0)}
    expected = exact_first_tokens(main, [1, 2], SAMPLED, 2)
    stats = SpeculativeStats()
    out = tokens(speculative_tokens(main, drafts[draft], [1, 2], SAMPLED, stats=stats))
    assert chi_square(Counter(map(tuple, out)), expected, len(out)) < LIMIT
    plain = tokens(generate_tokens(main, [1, 2], SAMPLED))
    assert chi_square(Counter(map(tuple, plain)), expected, len(plain)) < LIMIT
    if draft == "same":
        assert stats.accepted == stats.proposed


def test_the_distribution_test_fails_a_scheme_that_keeps_every_draft_token(monkeypatch):
    main, other = tiny(3, vocab=7, sharp=6.0), tiny(4, vocab=7, sharp=6.0)
    settings = SAMPLED.replace(max_new_tokens=3)
    expected = exact_first_tokens(main, [1, 2], settings, 3)

    def keep_all(p_scores, q_scores, drafted, greedy, groups):
        kept, token = real(p_scores, q_scores, drafted, greedy, groups)
        return torch.full_like(kept, drafted.size(1)), token

    real = spec.accept
    monkeypatch.setattr(spec, "accept", keep_all)
    out = tokens(speculative_tokens(main, other, [1, 2], settings, draft_tokens=2))
    assert chi_square(Counter(map(tuple, out)), expected, len(out)) > 10 * LIMIT


# -- text, chat and the command line ---------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from gptkit.chat_template import default_chat_template

    root = tmp_path_factory.mktemp("spec")
    return (write_run(root / "main", default_chat_template()),
            write_run(root / "draft", default_chat_template()))


def test_sample_text_with_a_draft_writes_the_same_greedy_text(runs):
    from gptkit.run import load_run

    main, draft = load_run(runs[0]), load_run(runs[1])
    cfg = GenerationConfig(temperature=0, max_new_tokens=40, stop=["zz"])
    speculative = Speculative(draft.model, tokens=3)
    assert sample_text(main.model, main.tokenizer, "To be", cfg, speculative=speculative) == \
        sample_text(main.model, main.tokenizer, "To be", cfg)
    assert speculative.stats.proposed > 0
    with pytest.raises(GptkitError, match="beam search"):
        sample_text(main.model, main.tokenizer, "To be", cfg.replace(num_beams=2),
                    speculative=speculative)


def test_sample_with_draft_prints_the_acceptance_rate(runs, capsys):
    greedy = ("sample", str(runs[0]), "--prompt", "ROMEO:", "--temperature", "0",
              "--max-new-tokens", "30")
    code, plain, _ = run_cli(capsys, *greedy)
    assert code == 0
    code, out, err = run_cli(capsys, *greedy, "--draft", str(runs[1]), "--draft-tokens", "3")
    assert code == 0 and out == plain
    assert err.startswith("draft: ") and "tokens accepted" in err
    code, out, err = run_cli(capsys, *greedy, "--draft", str(runs[1]), "--num-samples", "2",
                             "--temperature", "1", "--seed", "1")
    assert code == 0 and out.count("ROMEO:") == 2
    expect_error(capsys, *greedy, "--draft", str(runs[1]), "--num-beams", "2",
                 match="--num-beams")
    expect_error(capsys, *greedy, "--draft-tokens", "3", match="--draft RUN")
    expect_error(capsys, *greedy, "--draft", str(runs[1]), "--draft-tokens", "0",
                 match="--draft-tokens must be >= 1")


def test_a_draft_with_another_tokenizer_is_refused(runs, tmp_path, capsys):
    other = write_run(tmp_path / "other")
    tokenizer = (other / "tokenizer.json").read_text()
    (other / "tokenizer.json").write_text(tokenizer.replace('"a":', '"\\u00e9":', 1))
    expect_error(capsys, "sample", str(runs[0]), "--draft", str(other),
                 match="different tokenizer")


def test_chat_with_a_draft_gives_the_same_replies(runs, capsys, monkeypatch):
    flags = ("--temperature", "0", "--max-new-tokens", "20")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhow are you\n"))
    code, plain, _ = run_cli(capsys, "chat", str(runs[0]), *flags)
    assert code == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhow are you\n"))
    code, out, err = run_cli(capsys, "chat", str(runs[0]), *flags, "--draft", str(runs[1]))
    assert code == 0, err
    assert out == plain and "tokens accepted" in err


def test_stats_summary_wording():
    stats = SpeculativeStats(proposed=400, accepted=312, passes=50, steps=120)
    assert stats.summary() == ("draft: 312/400 tokens accepted (78%), 2.4 tokens per "
                               "main-model pass")
    assert SpeculativeStats().summary().startswith("draft: 0/0 tokens accepted (0%)")


def test_models_in_training_mode_decode_without_dropout_and_stay_in_it():
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=24, vocab_size=11,
                         dropout=0.5)
    torch.manual_seed(0)
    main, draft = GPT(config).double().train(), GPT(config).double().train()
    settings = GenerationConfig(temperature=0, max_new_tokens=8)
    out = tokens(speculative_tokens(main, draft, [1], settings))
    assert main.training and draft.training
    assert out == tokens(generate_tokens(main.eval(), [1], settings))
