"""gptkit's generation against `transformers`' on the same weights: processors, greedy,
sampling and beam search must give the same scores and the same tokens.

The models are tiny random GPTs, perturbed so that their distributions are far from flat,
with the end-of-text logit raised so that sequences really end (and beams finish at
different lengths). Every `transformers` setting is passed explicitly: its defaults (e.g.
top_k=50) must not leak in.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.generation import GenerationMixin  # noqa: E402
from transformers.generation import logits_process as hf_lp  # noqa: E402

from gptkit.config import ModelConfig  # noqa: E402
from gptkit.generation import logits_process as lp  # noqa: E402
from gptkit.generation.beam import beam_search  # noqa: E402
from gptkit.generation.sampling import generate  # noqa: E402
from gptkit.interop.hf import to_transformers  # noqa: E402
from gptkit.model import GPT  # noqa: E402
from tests.generation_opts import beam_opts, opts  # noqa: E402

VOCAB, EOT, BLOCK = 40, 39, 32
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11], [20], [30, 31, 5, 6]]

# gptkit follows current transformers. Older releases (4.45, the oldest admitted, pinned in
# .ci/lowest.txt) differ in three places that transformers changed on purpose since; what
# depends on them is compared only where the installed transformers has the change:
# - the repetition penalty skips each row's left padding (`prompt_ignore_length`); before, it
#   also penalised the pad token of a left-padded batch;
HF_PENALTY_SKIPS_PADDING = "prompt_ignore_length" in inspect.getsource(
    GenerationMixin._get_logits_processor
)
OLD_PENALTY = "this transformers penalises left padding too (no prompt_ignore_length)"
# - a bad word longer than the sequence so far still bans its last token once its prefix
#   fits; before, it was ignored until the sequence was as long as the whole word;
HF_BANS_LONG_WORDS_EARLY = bool(torch.isinf(hf_lp.NoBadWordsLogitsProcessor([[0, 1, 2]])(
    torch.tensor([[0, 1]]), torch.zeros(1, 3)))[0, 2])
# - beam search with early_stopping=False stops once the best *running* beam cannot beat the
#   worst finished hypothesis (vectorised beam search); before, its BeamScorer took the best
#   candidate of the step, finished ones included.
HF_STOPS_ON_RUNNING_BEAMS = hasattr(GenerationMixin, "_get_top_k_continuations")
OLD_BEAM_STOP = "this transformers' BeamScorer stops early_stopping=False beams otherwise"


def skip_where_transformers_differs(prompts: list[list[int]], settings: dict[str, Any]) -> None:
    """Skip a generation case whose outcome an older transformers computes otherwise."""
    padded = len({len(p) for p in prompts}) > 1
    if padded and settings.get("repetition_penalty", 1.0) != 1.0 and not HF_PENALTY_SKIPS_PADDING:
        pytest.skip(OLD_PENALTY)
    beams = settings.get("num_beams", 1) > 1
    if beams and settings.get("early_stopping", False) is False and not HF_STOPS_ON_RUNNING_BEAMS:
        pytest.skip(OLD_BEAM_STOP)


def tiny_pair(seed: int = 0, eos_boost: float = 1.0) -> tuple[GPT, Any]:
    """A gptkit GPT and the same network in `transformers`."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=VOCAB))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        eot = model.transformer.wte.weight[EOT]  # the tied head: this raises the EOT logit
        model.transformer.ln_f.bias.add_(eos_boost * eot / eot.pow(2).sum())
    return model.eval(), to_transformers(model, EOT)


@pytest.fixture(scope="module")
def models() -> tuple[GPT, Any]:
    return tiny_pair()


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[EOT] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def hf_generate(hf: Any, prompts: list[list[int]], **ours: Any) -> Any:
    """`transformers`' generate with the settings `ours` name in gptkit's terms."""
    ids, mask = left_padded(prompts)
    temperature = ours.pop("temperature", 1.0)
    top_k = ours.pop("top_k", None)
    settings = {
        "do_sample": temperature > 0,
        "temperature": temperature if temperature > 0 else 1.0,
        "top_k": 0 if top_k is None else top_k,
        "top_p": ours.pop("top_p", 1.0),
        "typical_p": ours.pop("typical_p", 1.0),
        "repetition_penalty": ours.pop("repetition_penalty", 1.0),
        "no_repeat_ngram_size": ours.pop("no_repeat_ngram_size", 0),
        "bad_words_ids": ours.pop("bad_words_ids", None),
        "min_new_tokens": ours.pop("min_new_tokens", 0),
        "num_beams": ours.pop("num_beams", 1),
        "num_return_sequences": ours.pop("num_samples", 1),
        "length_penalty": ours.pop("length_penalty", 1.0),
        "early_stopping": ours.pop("early_stopping", False),
        "max_new_tokens": ours.pop("max_new_tokens"),
        "pad_token_id": EOT, "eos_token_id": EOT, "bos_token_id": EOT,
        **ours,
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return hf.generate(ids, attention_mask=mask, **settings)


# ---------------------------------------------------------------- processors


def random_case(rows: int = 6, vocab: int = 12, length: int = 9, seed: int = 0):
    """Scores with ties and masked (-inf) entries, and ids with repeats."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, vocab, generator=g) * 3
    scores[0] = scores[0].round()  # ties
    scores[1, :4] = scores[1, 4]  # a tie at the top
    scores[2, ::3] = -math.inf  # already filtered
    scores[3] = 0.0  # flat
    ids = torch.randint(0, 4, (rows, length), generator=g)  # few distinct ids: repeats
    ids[3] = 3  # every n-gram repeats
    ids[4] = torch.arange(length) % vocab  # none does
    ids[5] = torch.arange(length) % 2 + 1  # 1, 2, 1, 2, ...
    return ids, scores


CASES = [
    (lp.RepetitionPenaltyLogitsProcessor(1.3), hf_lp.RepetitionPenaltyLogitsProcessor(1.3)),
    (lp.RepetitionPenaltyLogitsProcessor(0.6), hf_lp.RepetitionPenaltyLogitsProcessor(0.6)),
    *([(lp.RepetitionPenaltyLogitsProcessor(2.0, 3),
        hf_lp.RepetitionPenaltyLogitsProcessor(2.0, 3)),
       (lp.RepetitionPenaltyLogitsProcessor(1.5, torch.tensor([0, 2, 5, 1, 0, 8])),
        hf_lp.RepetitionPenaltyLogitsProcessor(1.5, torch.tensor([0, 2, 5, 1, 0, 8])))]
      if HF_PENALTY_SKIPS_PADDING else []),
    *[(lp.NoRepeatNGramLogitsProcessor(n), hf_lp.NoRepeatNGramLogitsProcessor(n))
      for n in (1, 2, 3, 9, 10)],
    (
        lp.NoBadWordsLogitsProcessor([[5], [1, 2], [0, 1, 3], [11], [2, 11]], eos_token_id=11),
        hf_lp.NoBadWordsLogitsProcessor([[5], [1, 2], [0, 1, 3], [11], [2, 11]], eos_token_id=11),
    ),
    (
        lp.NoBadWordsLogitsProcessor([[3, 3], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 7]]),
        hf_lp.NoBadWordsLogitsProcessor([[3, 3], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 7]]),
    ),
    # OpenAI's logit_bias is transformers' sequence bias with one-token sequences
    (lp.LogitBiasLogitsProcessor({5: 2.5, 0: -100.0, 11: 100.0}),
     hf_lp.SequenceBiasLogitsProcessor({(5,): 2.5, (0,): -100.0, (11,): 100.0})),
    *[(lp.MinNewTokensLengthLogitsProcessor(4, m, 2),
       hf_lp.MinNewTokensLengthLogitsProcessor(4, m, 2)) for m in (0, 5, 6)],
    *[(lp.TemperatureLogitsWarper(t), hf_lp.TemperatureLogitsWarper(t)) for t in (0.3, 1.7)],
    *[(lp.TopKLogitsWarper(k, min_tokens_to_keep=m),
       hf_lp.TopKLogitsWarper(k, min_tokens_to_keep=m))
      for k, m in [(1, 1), (3, 1), (1, 2), (50, 1), (4, 6)]],
    *[(lp.TopPLogitsWarper(p, min_tokens_to_keep=m),
       hf_lp.TopPLogitsWarper(p, min_tokens_to_keep=m))
      for p, m in [(0.05, 1), (0.3, 1), (0.7, 2), (0.9, 1), (0.999, 3), (1.0, 1)]],
    *[(lp.TypicalLogitsWarper(p, min_tokens_to_keep=m),
       hf_lp.TypicalLogitsWarper(p, min_tokens_to_keep=m))
      for p, m in [(0.05, 1), (0.2, 1), (0.5, 2), (0.9, 1), (0.99, 4)]],
]


@pytest.mark.parametrize(("ours", "theirs"), CASES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_processor_gives_transformers_scores(ours, theirs, seed):
    ids, scores = random_case(seed=seed)
    expected = theirs(ids, scores.clone())
    assert torch.equal(ours(ids, scores.clone()), expected)
    if HF_BANS_LONG_WORDS_EARLY or not isinstance(ours, lp.NoBadWordsLogitsProcessor):
        assert torch.equal(ours(ids[:, :2], scores.clone()), theirs(ids[:, :2], scores.clone()))


def test_processor_chain_is_the_one_transformers_builds(models):
    _, hf = models
    config = transformers.GenerationConfig(
        do_sample=True, temperature=0.7, top_k=5, top_p=0.9, typical_p=0.8,
        repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[3], [4, 5]],
        min_new_tokens=2, eos_token_id=EOT, pad_token_id=EOT,
    )
    hf._prepare_special_tokens(config, False, device="cpu")
    ids, mask = left_padded(PROMPTS)
    theirs = hf._get_logits_processor(
        generation_config=config, input_ids_seq_length=ids.size(1), encoder_input_ids=ids,
        prefix_allowed_tokens_fn=None, logits_processor=transformers.LogitsProcessorList(),
        device="cpu",
        model_kwargs={"attention_mask": mask},
    )
    ours = lp.build_processors(
        0.7, 5, 0.9, typical_p=0.8, repetition_penalty=1.2, no_repeat_ngram_size=2,
        bad_words_ids=[[3], [4, 5]], min_new_tokens=2, prompt_length=ids.size(1),
        eos_token_id=EOT,
        # an older transformers penalises the padding too (OLD_PENALTY): compare what is shared
        padding_lengths=mask.argmax(dim=1) if HF_PENALTY_SKIPS_PADDING else None,
    )
    assert [type(p).__name__ for p in ours] == [type(p).__name__ for p in theirs]
    scores = torch.randn(len(PROMPTS), VOCAB, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(ours(ids, scores.clone()), theirs(ids, scores.clone()))


# ---------------------------------------------------------------- greedy and sampling

GREEDY = [
    {},
    {"repetition_penalty": 1.8},
    {"repetition_penalty": 0.7, "no_repeat_ngram_size": 2},
    {"no_repeat_ngram_size": 1},
    {"no_repeat_ngram_size": 3, "min_new_tokens": 6},
    {"bad_words_ids": [[27], [7, 6], [6, 27, 7]]},
    {"min_new_tokens": 8, "repetition_penalty": 1.3, "bad_words_ids": [[6]]},
]


@pytest.mark.parametrize("settings", GREEDY, ids=str)
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one", "left-padded"])
def test_greedy_matches_transformers(models, prompts, settings):
    skip_where_transformers_differs(prompts, settings)
    model, hf = models
    args = {"max_new_tokens": 14, "temperature": 0.0, **settings}
    ours = generate(model, prompts, opts(**args), eot_id=EOT)
    assert torch.equal(ours, hf_generate(hf, prompts, **args))


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 1.3, "top_p": 0.8, "repetition_penalty": 1.2},
        {"temperature": 1.0, "typical_p": 0.6, "no_repeat_ngram_size": 2, "num_samples": 3},
        {"temperature": 0.9, "top_k": 8, "top_p": 0.9, "typical_p": 0.9, "min_new_tokens": 4,
         "bad_words_ids": [[27]], "num_samples": 2},
    ],
    ids=str,
)
def test_seeded_sampling_matches_transformers_under_the_same_seed(models, settings):
    skip_where_transformers_differs(PROMPTS, settings)
    model, hf = models
    args = {"max_new_tokens": 12, **settings}
    ours = generate(model, PROMPTS, opts(seed=123, **args), eot_id=EOT)
    torch.manual_seed(123)  # the private generator's stream is the global one's
    assert torch.equal(ours, hf_generate(hf, PROMPTS, **args))


# ---------------------------------------------------------------- beam search

BEAMS = [
    {"num_beams": 2, "length_penalty": 1.0, "early_stopping": False},
    {"num_beams": 3, "length_penalty": 0.5, "early_stopping": "never", "num_samples": 3},
    {"num_beams": 4, "length_penalty": 2.0, "early_stopping": True, "num_samples": 2},
    {"num_beams": 4, "length_penalty": -0.5, "early_stopping": False, "num_samples": 4},
    {"num_beams": 3, "length_penalty": 1.5, "early_stopping": "never"},
    {"num_beams": 2, "length_penalty": 0.0, "early_stopping": True},
    {"num_beams": 3, "length_penalty": 1.2, "early_stopping": False, "repetition_penalty": 1.4,
     "no_repeat_ngram_size": 2, "bad_words_ids": [[27]], "min_new_tokens": 3, "num_samples": 2},
]


@pytest.mark.parametrize("settings", BEAMS, ids=str)
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one", "left-padded"])
def test_beam_search_matches_transformers(models, prompts, settings):
    skip_where_transformers_differs(prompts, settings)
    model, hf = models
    args = {"max_new_tokens": 10, "temperature": 0.0, **settings}
    ours = beam_search(model, prompts, beam_opts(**args), eot_id=EOT)
    theirs = hf_generate(hf, prompts, return_dict_in_generate=True, output_scores=True, **args)
    assert torch.equal(ours.sequences, theirs.sequences)
    torch.testing.assert_close(ours.scores, theirs.sequences_scores)
    assert torch.equal(generate(model, prompts, opts(**args), eot_id=EOT), theirs.sequences)


def test_beams_really_finish_at_different_lengths(models):
    """The parity above is only worth something if hypotheses end on EOT, apart."""
    model, _ = models
    out = beam_search(model, PROMPTS, beam_opts(max_new_tokens=10, num_beams=4, num_samples=4),
                      eot_id=EOT)
    lengths = {len(t) for t in out.new_tokens if t[-1] == EOT}
    assert len(lengths) >= 3 and any(len(t) == 10 for t in out.new_tokens)


def rank_drawn_candidates(monkeypatch: pytest.MonkeyPatch, hf: Any) -> None:
    """Make a `transformers` that keeps beam sampling's draw order rank the draw by score.

    Beam sampling draws 2 x num_beams candidates; transformers 4.45 (`_beam_sample`) and 5.24+
    (`_get_top_k_continuations`) sort them by score, so the best num_beams may finish; the
    releases between kept the draw order, so the first ones drawn could. gptkit ranks; on
    those releases this adds the one sort that 5.24 added, nothing else.
    """
    method = getattr(type(hf), "_get_top_k_continuations", None)
    if method is None or ".sort(" in inspect.getsource(method):
        return
    signature = inspect.signature(method)

    def ranked(self: Any, *args: Any, **kwargs: Any) -> Any:
        scores, sequences, beam_indices = method(self, *args, **kwargs)
        if not signature.bind(self, *args, **kwargs).arguments["do_sample"]:
            return scores, sequences, beam_indices
        scores, order = scores.sort(dim=-1, descending=True)
        return (scores, sequences.gather(1, order[:, :, None].expand_as(sequences)),
                beam_indices.gather(1, order[:, :, None].expand_as(beam_indices)))

    monkeypatch.setattr(type(hf), "_get_top_k_continuations", ranked)


def test_beam_sampling_matches_transformers_under_the_same_seed(models, monkeypatch):
    model, hf = models
    rank_drawn_candidates(monkeypatch, hf)
    args = {"max_new_tokens": 8, "temperature": 0.8, "top_k": 10, "num_beams": 3,
            "num_samples": 2, "length_penalty": 1.3}
    skip_where_transformers_differs(PROMPTS, args)
    ours = beam_search(model, PROMPTS, beam_opts(seed=5, **args), eot_id=EOT)
    torch.manual_seed(5)
    assert torch.equal(ours.sequences, hf_generate(hf, PROMPTS, **args))
