"""`GenerationConfig`: every generation setting in one validated object.

One object travels whole from where settings are chosen (a run's `sample:` section, the
`sample` command's flags, a server request, the Python API) to the decoders, so no list of
keyword parameters is repeated along the way and every setting is checked once, here, by the
rule written beside it. Names and meanings are those of Hugging Face's `GenerationConfig`
(`num_samples` is its `num_return_sequences`, `stop` its `stop_strings`, temperature 0 its
`do_sample=False`; the Hugging Face names are accepted too). `prompt` and `bad_words` (text)
are gptkit's: the default prompt of `gptkit sample` and of the samples training writes, and
words kept out of the text (`sample_text` turns them into `bad_words_ids` with the
tokenizer).

Bad settings raise `GptkitError` with one line that names the setting as the caller knows
it: `GenerationConfig.parse(values, prefix="sample.")` for a run config, "--" on the command
line (which also writes `-` for `_`), none from Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from gptkit.errors import GptkitError

# Hugging Face's names for settings gptkit spells its own way (recipes keep gptkit's).
HF_NAMES = {"num_return_sequences": "num_samples", "stop_strings": "stop"}


def _prefix(info: ValidationInfo) -> str:
    """How the caller names the settings: "sample." in a run config, "--" on the CLI."""
    return str((info.context or {}).get("prefix", ""))


def _rule(ok: Callable[[Any], bool], says: str) -> AfterValidator:
    """A check that sits beside its field: `says` finishes "<field> ..." ({v}: the value)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if not ok(value):
            raise ValueError(f"{_prefix(info)}{info.field_name} {says.format(v=value)}")
        return value

    return AfterValidator(check)


def _texts(value: list[Any]) -> bool:
    return all(isinstance(w, str) and w for w in value)


class GenerationConfig(BaseModel):
    """How to generate: Hugging Face `generate`'s settings, validated and immutable.

    Also a run config's `sample:` section (the defaults of `gptkit sample` and of the samples
    training writes), hence the defaults: 500 new tokens at temperature 0.8 among the top 200.
    Change a setting with `settings.replace(name=value)`, which checks again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = None  # None: start from the end-of-text token
    max_new_tokens: Annotated[int, _rule(lambda v: v >= 0, "must be >= 0 (got {v})")] = 500
    # end-of-text is forbidden before this many new tokens
    min_new_tokens: Annotated[int, _rule(lambda v: v >= 0, "must be >= 0 (got {v})")] = 0
    # 0 means greedy (with num_beams > 1: beam search, else sampled): HF's do_sample=False
    temperature: Annotated[float, _rule(lambda v: v >= 0, "must be >= 0 (got {v})")] = 0.8
    top_k: Annotated[int | None, _rule(lambda v: v is None or v >= 1,
                                       "must be >= 1 (got {v})")] = 200
    top_p: Annotated[float, _rule(lambda v: 0 < v <= 1, "must be in (0, 1] (got {v})")] = 1.0
    # typical sampling; 1 = off
    typical_p: Annotated[float, _rule(lambda v: 0 < v <= 1,
                                      "must be in (0, 1] (got {v})")] = 1.0
    # > 1 discourages tokens already in the text; 1 = off
    repetition_penalty: Annotated[float, _rule(lambda v: v > 0,
                                               "must be > 0, 1 = off (got {v})")] = 1.0
    # OpenAI's penalties on the tokens generated so far (not the prompt's): a token's score
    # loses presence_penalty once it has occurred and frequency_penalty per occurrence
    frequency_penalty: Annotated[float, _rule(lambda v: -2 <= v <= 2,
                                              "must be in [-2, 2], 0 = off (got {v})")] = 0.0
    presence_penalty: Annotated[float, _rule(lambda v: -2 <= v <= 2,
                                             "must be in [-2, 2], 0 = off (got {v})")] = 0.0
    # token id -> number added to its score (OpenAI's logit_bias; -100 bans, 100 forces)
    logit_bias: Annotated[dict[int, float] | None, _rule(
        lambda v: v is None or all(i >= 0 and -100 <= b <= 100 for i, b in v.items()),
        "must map token ids >= 0 to biases in [-100, 100] (got {v!r})")] = None
    # no n-gram of this many tokens occurs twice; 0 = off
    no_repeat_ngram_size: Annotated[int, _rule(lambda v: v >= 0,
                                                "must be >= 0, 0 = off (got {v})")] = 0
    # words/phrases never generated (text; `sample_text` encodes them)
    bad_words: Annotated[list[str], _rule(_texts, "must be a list of non-empty strings "
                                                  "(got {v!r})")] = []
    # token id sequences never generated (HF's bad_words_ids)
    bad_words_ids: Annotated[list[list[int]] | None, _rule(
        lambda v: v is None or all(w and min(w) >= 0 for w in v),
        "must be a list of non-empty lists of token ids >= 0 (got {v!r})")] = None
    # stop strings: the text ends before one (HF's stop_strings)
    stop: Annotated[list[str], _rule(_texts, "must be a list of non-empty strings "
                                             "(got {v!r})")] = []
    # per prompt (HF's num_return_sequences)
    num_samples: Annotated[int, _rule(lambda v: v >= 1, "must be >= 1 (got {v})")] = 1
    # > 1: beam search
    num_beams: Annotated[int, _rule(lambda v: v >= 1, "must be >= 1 (got {v})")] = 1
    # beam score = log-prob / length ** length_penalty
    length_penalty: Annotated[float, _rule(math.isfinite,
                                           "must be a finite number (got {v})")] = 1.0
    # beam search: true, false or "never"
    early_stopping: Annotated[bool | str, _rule(
        lambda v: isinstance(v, bool) or v == "never",
        "must be true, false or never (got {v!r})")] = False
    # the samples training writes (samples.txt): the same each evaluation; None: fresh.
    # `gptkit sample` and `serve` draw fresh randomness unless given a seed.
    seed: int | None = 1337

    @classmethod
    def parse(cls, values: dict[str, Any], prefix: str = "") -> GenerationConfig:
        """Settings from a mapping; an error names the setting as `prefix` + its name
        ("sample." for a run config, "--" for command-line flags)."""
        return cls.model_validate(values, context={"prefix": prefix})

    def replace(self, prefix: str = "", **changes: Any) -> GenerationConfig:
        """A copy with `changes`, checked like a new object (model_copy would not check)."""
        return self.parse({**self.model_dump(), **changes}, prefix)

    @property
    def do_sample(self) -> bool:
        """HF's switch: True samples (temperature > 0), False is greedy or plain beams."""
        return self.temperature > 0

    def processor_key(self) -> tuple[object, ...]:
        """What shapes the logits processors: settings with equal keys can share a batch
        (seed, lengths, stop strings and counts are per request). Greedy decoding ignores
        the warpers (temperature, top-k, top-p, typical)."""
        words = tuple(tuple(w) for w in self.bad_words_ids or [])
        bias = tuple(sorted((self.logit_bias or {}).items()))
        common = (self.min_new_tokens, self.repetition_penalty, self.no_repeat_ngram_size,
                  tuple(self.bad_words), words, self.frequency_penalty,
                  self.presence_penalty, bias)
        if self.temperature == 0:
            return (0.0, *common)
        return (self.temperature, self.top_k, self.top_p, self.typical_p, *common)

    @model_validator(mode="after")
    def _beams(self, info: ValidationInfo) -> GenerationConfig:
        p = _prefix(info)
        if self.num_beams > 1 and self.num_samples > self.num_beams:
            raise ValueError(
                f"{p}num_samples ({self.num_samples}) must be <= {p}num_beams "
                f"({self.num_beams}) with beam search: the best beams are returned")
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(
        cls, values: Any, handler: Callable[[Any], GenerationConfig],
        info: ValidationInfo,
    ) -> GenerationConfig:
        """Hugging Face's names in, and a bad setting out as one GptkitError line (pydantic
        lets exceptions other than ValueError through)."""
        try:
            return handler(_hf_names(values) if isinstance(values, dict) else values)
        except ValidationError as exc:
            raise _one_line(exc, _prefix(info)) from None

def _hf_names(values: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face's names mapped to gptkit's; do_sample=False is temperature 0."""
    out = {HF_NAMES.get(key, key): value for key, value in values.items()}
    for hf, ours in HF_NAMES.items():
        if hf in values and ours in values:
            raise GptkitError(f"{hf} and {ours} are the same setting; give one")
    if "do_sample" in out:
        do_sample = out.pop("do_sample")
        if do_sample is False:
            out["temperature"] = 0.0
        elif do_sample is True and out.get("temperature", 1.0) == 0:
            raise GptkitError("do_sample=True needs temperature > 0 (0 is greedy)")
        elif not isinstance(do_sample, bool):
            raise GptkitError(f"do_sample must be true or false (got {do_sample!r})")
        else:
            out.setdefault("temperature", 1.0)  # HF's default temperature when sampling
    return out


def _one_line(exc: ValidationError, prefix: str) -> GptkitError:
    """The first problem pydantic found, as gptkit says it (the rules above word their own
    messages; a wrong type or an unknown name gets one here)."""
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return GptkitError(str(cause))
    name = prefix + ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        fields = ", ".join(GenerationConfig.model_fields)
        return GptkitError(f"unknown generation setting {name!r}; the settings are: {fields}")
    return GptkitError(f"{name}: {error['msg']} (got {error['input']!r})")
