"""POST /v1/chat/completions: OpenAI's chat request and answer bodies, and the conversation
turned into the prompt the model reads.

A conversation is rendered by the run's chat template (`gptkit.chat_template`, the format it
was fine-tuned on) with the generation prompt, and the reply is generated as a completion of
that text: it ends at end-of-text, at the template's end-of-turn text (`stop_strings`, never
part of the reply) or at the request's stops. The request is validated as strictly as the
completions one; every other field of OpenAI's chat request is known, its neutral value (what
clients send when nothing was chosen) accepted and anything else a 422 saying gptkit does not
support it, never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gptkit.chat_template import ChatTemplate, Message, encode_chat, stop_strings
from gptkit.serve.schemas import SamplingRequest, Strict, Usage
from gptkit.tokenizers import Tokenizer

MAX_MESSAGES = 256
MAX_TOP_LOGPROBS = 20  # as OpenAI


class TextPart(Strict):
    """One part of a message's content in OpenAI's list form; only text exists here."""

    type: str
    text: str

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise ValueError(f"content parts of type {value!r} are not supported: gptkit's "
                             "models read text only (type 'text')")
        return value


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] = Field(
        description="the text, or OpenAI's list of {type: 'text', text} parts (joined)")
    name: str | None = Field(None, description="ignored: chat templates have no names")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


def _neutral(field: str, value: Any, neutral: tuple[Any, ...]) -> None:
    if value not in neutral:
        raise ValueError(f"{field}: {value!r} is not supported by gptkit (it has no tools, "
                         "structured output or hosted storage); leave it out or at "
                         f"{' or '.join(repr(n) for n in neutral if n is not None) or 'null'}")


class ChatRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(
        min_length=1, max_length=MAX_MESSAGES,
        description="the conversation so far: system, user and assistant messages")
    max_completion_tokens: int | None = Field(
        None, ge=0, description="the same as max_tokens (OpenAI's newer name); give either")
    logprobs: bool | None = Field(
        None, description="report the reply's tokens' log-probabilities (the distribution "
        "each was drawn from, after the logits processors, as completions' logprobs)")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="with logprobs: the most likely "
        f"tokens at each position, 0 to {MAX_TOP_LOGPROBS} (at most the server's "
        "max_logprobs, GET /health)")
    # OpenAI's fields gptkit has nothing for: their neutral values only
    tools: list[Any] | None = Field(None, description="only none or empty (no tool calls)")
    tool_choice: Any = Field(None, description="only none or 'none'")
    functions: list[Any] | None = Field(None, description="only none or empty")
    function_call: Any = Field(None, description="only none or 'none'")
    parallel_tool_calls: bool | None = Field(None, description="ignored (no tools)")
    response_format: dict[str, Any] | None = Field(
        None, description="only none or {'type': 'text'}")
    store: bool | None = Field(None, description="only none or false (nothing is stored)")
    metadata: dict[str, str] | None = Field(
        None, description="only none or empty (nothing is stored)")
    service_tier: str | None = Field(None, description="only none, 'auto' or 'default'")
    modalities: list[str] | None = Field(None, description="only none or ['text']")

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            raise ValueError(f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                             f"({self.max_completion_tokens}) differ; give one of them")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        _neutral("tools", self.tools, (None, []))
        _neutral("tool_choice", self.tool_choice, (None, "none"))
        _neutral("functions", self.functions, (None, []))
        _neutral("function_call", self.function_call, (None, "none"))
        _neutral("response_format", self.response_format, (None, {"type": "text"}))
        _neutral("store", self.store, (None, False))
        _neutral("metadata", self.metadata, (None, {}))
        _neutral("service_tier", self.service_tier, (None, "auto", "default"))
        _neutral("modalities", self.modalities, (None, ["text"]))
        return self

    @property
    def new_tokens(self) -> int | None:
        """max_tokens or max_completion_tokens, whichever was given (they agree)."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def conversation(self) -> list[Message]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


def chat_prompt(request: ChatRequest, template: ChatTemplate,
                tokenizer: Tokenizer) -> tuple[list[int], list[str]]:
    """(the ids the model reads before it answers, the stop strings that end its turn)."""
    ids = encode_chat(request.conversation(), tokenizer, template, add_generation_prompt=True)
    return ids, stop_strings(template, tokenizer)


# --- answers (the OpenAPI page's description of them; the bodies are built in replies.py) ----
class ReplyMessage(Strict):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(Strict):
    token: str
    logprob: float
    bytes: list[int]  # the token text's UTF-8 bytes


class TokenLogprobs(TopLogprob):
    top_logprobs: list[TopLogprob]  # the most likely tokens at this position, most first


class ChatLogprobs(Strict):
    """Each reply token's log-probability, as `logprobs` in completions reports generated
    tokens (after the logits processors; the raw model's at temperature 1 with none)."""

    content: list[TokenLogprobs]
    refusal: None = None


class ChatChoice(Strict):
    index: int
    message: ReplyMessage
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(Strict):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
