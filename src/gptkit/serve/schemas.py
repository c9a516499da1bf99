"""Request and response bodies of the HTTP API, shaped like OpenAI's completions API.

Requests are validated strictly (`extra="forbid"`, no string-to-number coercion, finite
numbers only), so that a misspelt or unsupported field is a 422 naming it rather than a
silently ignored wish. Every field of OpenAI's completions request is known, and its neutral
value (what clients send when the user chose nothing) always accepted; what gptkit cannot
honour (`suffix`; `logprobs` above the server's `max_logprobs`) is a 422 saying so. Omitted
sampling settings take the run's `sample` section, as `gptkit sample` does; an omitted seed
draws fresh randomness.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gptkit.generation.config import GenerationConfig

MAX_N = 16  # completions per prompt
MAX_PROMPTS = 16  # prompts in one request
MAX_STOP = 4  # stop strings, as OpenAI
Prompt = str | list[str] | list[int] | list[list[int]] | None
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


class Strict(BaseModel):
    """Unknown fields and wrongly typed values are errors (422), never guessed at."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = Field(
        False, description="send a last chunk with the token counts before [DONE]")


class SamplingRequest(Strict):
    """What completions and chat completions requests share: the model, the sampling settings,
    stop strings, n, seed and streaming."""

    model: str | None = Field(None, description="the served model's id (optional)")
    max_tokens: int | None = Field(
        None, ge=0, description="new tokens per completion (default: the run's "
        "sample.max_new_tokens, at most the server's limit)")
    temperature: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="0 = greedy; default: the run's")
    top_p: float | None = Field(
        None, gt=0, le=1, allow_inf_nan=False, description="nucleus sampling mass, in (0, 1]")
    top_k: int | None = Field(
        None, ge=0, description="sample among the K most likely tokens; 0 = all")
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, allow_inf_nan=False, description="lower a token's score by this "
        "much per time it occurs in the completion so far (OpenAI's); 0 or none: off")
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, allow_inf_nan=False, description="lower a token's score by this "
        "much once it occurs in the completion so far (OpenAI's); 0 or none: off")
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string, JSON's keys) -> number from -100 to 100 "
        "added to its score at every step")
    stop: str | list[str] | None = Field(
        None, description=f"up to {MAX_STOP} strings; the text ends before the first one")
    n: int = Field(1, ge=1, le=MAX_N, description="completions per prompt")
    seed: int | None = Field(
        None, ge=SEED_MIN, le=SEED_MAX, description="same seed, same text; none: random")
    stream: bool = Field(False, description="send server-sent events as text appears")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="ignored (OpenAI compatibility)")

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids (got {key!r})")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias of token {key} must be in [-100, 100] "
                                 f"(got {bias})")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
        if not all(stops):
            raise ValueError("stop strings must not be empty")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def bias(self) -> dict[int, float] | None:
        """`logit_bias` with integer token ids; None when empty."""
        return {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def candidates(self) -> int:
        """Texts generated per prompt (completions' best_of may ask more than n)."""
        return self.n

    def generation_config(self, run: GenerationConfig, max_tokens: int,
                          more_stops: list[str] | None = None) -> GenerationConfig:
        """The settings this request generates with: its own, or for temperature, top_k and
        top_p the run's `sample` section (as `gptkit sample` without those flags);
        `max_tokens` is already resolved against the server's limit, `more_stops` are the
        server's own (a chat template's end of turn). Settings the API does not offer stay at
        their neutral defaults; top_k 0 means all tokens."""
        top_k = run.top_k if self.top_k is None else self.top_k
        return GenerationConfig(
            max_new_tokens=max_tokens,
            temperature=run.temperature if self.temperature is None else self.temperature,
            top_k=top_k or None, top_p=run.top_p if self.top_p is None else self.top_p,
            stop=[*self.stops(), *(more_stops or [])], num_samples=self.candidates(),
            seed=self.seed,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0, logit_bias=self.bias(),
        )


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]] | None = Field(
        None, description="text to continue, or a list of them, or token ids (one prompt) or "
        "a list of token id lists; none or empty: start a fresh document (from the "
        "end-of-text token)")
    suffix: str | None = Field(
        None, description="refused unless empty: no gptkit model can insert text")
    logprobs: int | None = Field(
        None, ge=0, description="report each token's log-probability and those of this many "
        "most likely tokens at its position (OpenAI's legacy format: tokens, token_logprobs, "
        "top_logprobs, text_offset; top_logprobs also holds the chosen token). Generated "
        "tokens: the log-softmax (fp32) of the scores they were drawn from, after the logits "
        "processors: penalties, logit_bias, then temperature, top_k, top_p (-inf tokens are "
        "left out of top_logprobs); at temperature 0 (greedy) the processed scores without "
        "temperature; the raw model's when temperature is 1 and nothing else is set. Echoed "
        "prompt tokens (echo: true): the raw model's, no processors (the first one null). "
        "At most the server's max_logprobs (GET /health)")
    best_of: int | None = Field(
        None, ge=1, le=MAX_N, description="generate this many candidates per prompt and "
        "return the n with the highest mean token log-probability (>= n; not with stream)")
    echo: bool = Field(False, description="start each completion's text with its prompt")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Prompt) -> Prompt:
        if isinstance(value, list) and not value:
            raise ValueError("a list of prompts must not be empty")
        if isinstance(value, list) and isinstance(value[0], int):
            return value  # one prompt of token ids (its length is checked against the limit)
        if isinstance(value, list) and not 1 <= len(value) <= MAX_PROMPTS:
            raise ValueError(f"a list of prompts must hold 1 to {MAX_PROMPTS} prompts")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("a prompt of token ids must hold at least one id")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported: gptkit's models continue text and "
                             "cannot insert it before a suffix; leave suffix out")
        return value

    def candidates(self) -> int:
        return max(self.n, self.best_of or 0)

    def prompts(self) -> list[str | list[int] | None]:
        """The prompts as a list, text or token ids; None starts a fresh document."""
        value = self.prompt
        if not isinstance(value, list):
            return [value or None]
        items: list[Any] = list(value)
        if items and isinstance(items[0], int):
            return [[int(i) for i in items]]
        return [p or None for p in items]


class ClassifyRequest(Strict):
    """POST /v1/classify (classifier runs from `gptkit finetune-classify`)."""

    model: str | None = None
    input: str | list[str] = Field(
        description="a text, or a list of them; a tagging run tags their whitespace-separated "
        "words")

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: str | list[str]) -> str | list[str]:
        items = value if isinstance(value, list) else [value]
        if not 1 <= len(items) <= 64:
            raise ValueError("input must hold 1 to 64 texts")
        if not all(text.strip() for text in items):
            raise ValueError("input texts must not be empty")
        return value


class AttentionRequest(Strict):
    """POST /v1/attention: the prompt's attention weights of one layer (the playground's map)."""

    model: str | None = None
    prompt: str = Field(min_length=1)
    layer: int = Field(0, ge=0, description="layer from 0; every head of it is returned")


# --- responses --------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy per-token log-probabilities of a choice (its text's tokens, in order;
    with echo, the prompt's first)."""

    tokens: list[str]
    token_logprobs: list[float | None]  # an echoed prompt's first token: null
    top_logprobs: list[dict[str, float] | None]  # most likely tokens and the chosen one
    text_offset: list[int]  # where each token starts in the choice's text (characters)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gptkit"
    task: Literal["generate", "classify"]
    context_length: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LabelScore(BaseModel):
    label: str
    score: float


class WordTag(BaseModel):
    word: str
    tag: str
    score: float


class Classification(BaseModel):
    index: int
    label: str | None = None  # sequence task
    score: float | None = None
    scores: list[LabelScore] | None = None  # every label, most likely first
    words: list[WordTag] | None = None  # token task


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    task: Literal["sequence", "token"]
    data: list[Classification]


class AttentionResponse(BaseModel):
    model: str
    tokens: list[str]  # readable labels (space as ␣, newline as \n)
    layer: int
    n_layer: int
    n_head: int
    weights: list[list[list[float]]]  # [head][query][key], rows sum to 1


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
