"""Score a model's generated answers against reference answers: BLEU, ROUGE, exact match.

Each record (prompt/response, prompt + reference, or a chat) gives a prompt and its expected
answer (`template.generation_prompt`; a chat through the run's chat template). The model
answers every prompt through `gptkit.generation.text.sample_text` (greedy by default, ending
at the end-of-text token), batched, and the answers are scored with the usual tools so that
numbers compare with other work:
corpus BLEU from `sacrebleu` (0-100), ROUGE-1/2/L F-measure from `rouge-score` with stemming
(mean over examples, 0-1), and exact match after stripping surrounding whitespace (0-1).
All three see the stripped texts. Corpus BLEU counts n-grams up to 4 over the whole set, so
answers of a word or two (arithmetic, short facts) score 0 there: read exact match for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gptkit.chat_template import ChatTemplate, read_chat_template
from gptkit.errors import GptkitError, check_all
from gptkit.finetune.records import Record
from gptkit.finetune.template import generation_prompt
from gptkit.generation.config import GenerationConfig
from gptkit.run import Run

METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "exact_match")


@dataclass
class Example:
    """One scored answer (a line of the --predictions file)."""

    prompt: str
    reference: str
    prediction: str
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "reference": self.reference,
                "prediction": self.prediction, "exact": self.exact}


@dataclass
class GenerationScores:
    """Corpus BLEU (0-100), mean ROUGE F-measures (0-1) and exact-match rate (0-1) of n
    examples; `examples` holds the answers when they came from a model."""

    n: int
    bleu: float
    rouge1: float
    rouge2: float
    rougeL: float  # the name every ROUGE tool reports
    exact_match: float
    examples: list[Example] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, **{name: getattr(self, name) for name in METRICS}}


def _metric_libraries() -> tuple[Any, Any]:
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise GptkitError(
            f"scoring generated text needs {exc.name}; install it with "
            "pip install -e \".[finetune]\" (or pip install sacrebleu rouge-score)"
        ) from None
    return sacrebleu, rouge_scorer


def score_texts(predictions: Sequence[str], references: Sequence[str]) -> GenerationScores:
    """Score answers against references (one reference each); no model needed."""
    if len(predictions) != len(references):
        raise GptkitError(
            f"{len(predictions)} predictions but {len(references)} references; give one "
            "reference per prediction"
        )
    if not predictions:
        raise GptkitError("nothing to score: no predictions given")
    sacrebleu, rouge_scorer = _metric_libraries()
    hyps = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hyps, refs, strict=True):
        scores = scorer.score(ref, hyp)  # (target, prediction)
        for name in rouge:
            rouge[name] += scores[name].fmeasure
    n = len(hyps)
    exact = sum(h == r for h, r in zip(hyps, refs, strict=True)) / n
    return GenerationScores(
        n=n, bleu=float(bleu), rouge1=rouge["rouge1"] / n, rouge2=rouge["rouge2"] / n,
        rougeL=rouge["rougeL"] / n, exact_match=exact,
    )


def check_options(
    *, max_new_tokens: int, num_beams: int, temperature: float, batch_size: int,
    limit: int | None, seed: int = 1337, prefix: str = "",
) -> GenerationConfig:
    """The generation settings of these options (greedy unless `temperature` > 0, no top-k,
    answers ending at the end-of-text token), checked and named with `prefix` (CLI: "--");
    beyond GenerationConfig's own checks an answer needs a token, a batch a row."""
    checks = [
        (max_new_tokens >= 1, f"{prefix}max_new_tokens must be >= 1 (got {max_new_tokens})"),
        (batch_size >= 1, f"{prefix}batch_size must be >= 1 (got {batch_size})"),
        (limit is None or limit >= 1, f"{prefix}limit must be >= 1 (got {limit})"),
    ]
    try:
        settings = GenerationConfig.parse(
            {"max_new_tokens": max_new_tokens, "num_beams": num_beams,
             "temperature": temperature, "top_k": None, "seed": seed}, prefix=prefix)
        check_all(checks)
    except GptkitError as exc:
        raise GptkitError(str(exc).replace("_", "-") if prefix == "--" else str(exc)) from None
    return settings


def task_pairs(records: Sequence[Record], template: ChatTemplate | None = None
               ) -> list[tuple[Record, str, str]]:
    """(record, prompt, reference) of each record, chats rendered by `template` (gptkit's
    format by default); a record without an answer is an error."""
    pairs = []
    for record in records:
        prompt, reference = generation_prompt(record, template)
        if reference is None:
            raise GptkitError(
                f"{record.where} has no reference answer to score against: give it a "
                "'response' or 'reference' field (a chat: end it with an assistant message)"
            )
        pairs.append((record, prompt, reference))
    return pairs


def evaluate_generation(
    run: Run,
    records: Sequence[Record],
    *,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    temperature: float = 0.0,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int = 1337,
) -> GenerationScores:
    """Generate the run's answer to every record's prompt and score it against the record's
    reference. Prompts are batched in order of length (less padding); answers end at the
    end-of-text token or after `max_new_tokens`."""
    from gptkit.generation.text import sample_text

    settings = check_options(max_new_tokens=max_new_tokens, num_beams=num_beams,
                             temperature=temperature, batch_size=batch_size, limit=limit,
                             seed=seed)
    # the run's chat format (runs fine-tuned before it was stored used gptkit's)
    pairs = task_pairs(list(records)[:limit], read_chat_template(run.path))
    if not pairs:
        raise GptkitError("no records to evaluate; give at least one")
    block = run.config.model.block_size
    lengths = []
    for record, prompt, _ in pairs:
        size = len(run.tokenizer.encode(prompt))
        if size > block:
            raise GptkitError(
                f"{record.where}: the prompt is {size} tokens but the model reads at most "
                f"{block} (model.block_size); shorten that prompt or drop the record"
            )
        lengths.append(size)
    order = sorted(range(len(pairs)), key=lambda i: lengths[i])
    answers: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        prompts = [pairs[i][1] for i in batch]
        texts = sample_text(run.model, run.tokenizer, prompts, settings)
        for i, prompt, text in zip(batch, prompts, texts, strict=True):
            answers[i] = text[len(prompt) :]
    predictions = [answers[i] for i in range(len(pairs))]
    references = [reference for _, _, reference in pairs]
    scores = score_texts(predictions, references)
    scores.examples = [
        Example(prompt=prompt, reference=reference, prediction=prediction,
                exact=prediction.strip() == reference.strip())
        for (_, prompt, reference), prediction in zip(pairs, predictions, strict=True)
    ]
    return scores
