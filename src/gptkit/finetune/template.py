"""How prompt/response and chat records become text, and which parts of it are learnt.

Prompt/response record `{"prompt": P, "response": R}`:

    P R <|endoftext|>                      loss on: R <|endoftext|>

The two are joined as they are: put your own separator at the end of the prompt
(e.g. "Question: ...\\nAnswer: ").

Chat record `{"messages": [{"role": ..., "content": ...}, ...]}` (roles: system, user,
assistant): rendered by the run's chat template (`gptkit.chat_template`; gptkit's own format
unless the run started from a model with another), which is what every chat tool of gptkit
and transformers' `apply_chat_template` use too. The text each assistant message adds (its
content and end of turn) is learnt; the generation prompt is the conversation so far with
the template's generation prompt appended.
"""

from __future__ import annotations

from gptkit.chat_template import (
    ChatTemplate,
    Message,
    Segments,
    check_messages,
    default_chat_template,
)
from gptkit.errors import GptkitError
from gptkit.finetune.records import Record
from gptkit.tokenizers import EOT


def _messages(record: Record) -> list[Message]:
    return check_messages(record.get("messages", list), record.where)


def is_chat(record: Record) -> bool:
    return "messages" in record.fields


def segments(record: Record, template: ChatTemplate | None = None) -> Segments:
    """The record's training text, cut into parts that are learnt or only read (a chat's
    through `template`, gptkit's format by default)."""
    if is_chat(record):
        return (template or default_chat_template()).segments(_messages(record), record.where)
    if "prompt" not in record.fields and "response" not in record.fields:
        raise GptkitError(
            f"{record.where} needs fields prompt and response, or messages (a chat); "
            f"it has: {', '.join(record.fields) or 'nothing'}"
        )
    prompt = record.get("prompt")
    response = record.get("response")
    return [(prompt, False), (response + EOT, True)]


def generation_prompt(record: Record, template: ChatTemplate | None = None
                      ) -> tuple[str, str | None]:
    """(prompt to generate from, the expected answer if the record has one).

    Prompt/response: the prompt, and the response. Chat: the conversation up to its last
    assistant message rendered by `template` (gptkit's format by default) with its
    generation prompt, and that message's content.
    A record's `reference` field, when present, is the expected answer instead.
    """
    reference = record.fields.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise GptkitError(f"{record.where}: field 'reference' must be text")
    if is_chat(record):
        messages = _messages(record)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"),
                   default=len(messages))
        prompt = (template or default_chat_template()).render(messages[:last],
                                                              add_generation_prompt=True)
        answer = messages[last]["content"] if last < len(messages) else None
        return prompt, reference if reference is not None else answer
    prompt = record.get("prompt")
    answer = record.fields.get("response")
    if answer is not None and not isinstance(answer, str):
        raise GptkitError(f"{record.where}: field 'response' must be text")
    return prompt, reference if reference is not None else answer
