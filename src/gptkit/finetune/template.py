"""How prompt/response and chat records become text, and which parts of it are learnt.

Prompt/response record `{"prompt": P, "response": R}`:

    P R <|endoftext|>                      loss on: R <|endoftext|>

The two are joined as they are: put your own separator at the end of the prompt
(e.g. "Question: ...\\nAnswer: ").

Chat record `{"messages": [{"role": ..., "content": ...}, ...]}` (roles: system, user,
assistant), each message in turn:

    <|system|>\\n{content}\\n
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}<|endoftext|>     loss on: {content}<|endoftext|>

To generate a reply, the conversation so far is rendered and `<|assistant|>\\n` appended;
the model's end-of-text token ends its turn.
"""

from __future__ import annotations

from gptkit.errors import GptkitError
from gptkit.finetune.records import Record
from gptkit.tokenizers import EOT

ROLES = ("system", "user", "assistant")

Segments = list[tuple[str, bool]]  # (text, learnt?)


def _header(role: str) -> str:
    return f"<|{role}|>\n"


def _messages(record: Record) -> list[tuple[str, str]]:
    messages = record.get("messages", list)
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise GptkitError(f"{record.where}: messages[{i}] must be an object with role and "
                              "content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise GptkitError(f"{record.where}: messages[{i}].role must be one of "
                              f"{', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            raise GptkitError(f"{record.where}: messages[{i}].content must be text")
        out.append((role, content))
    return out


def is_chat(record: Record) -> bool:
    return "messages" in record.fields


def segments(record: Record) -> Segments:
    """The record's training text, cut into parts that are learnt or only read."""
    if is_chat(record):
        parts: Segments = []
        for role, content in _messages(record):
            if role == "assistant":
                parts += [(_header(role), False), (content + EOT, True)]
            else:
                parts.append((_header(role) + content + "\n", False))
        if not any(learnt for _, learnt in parts):
            raise GptkitError(f"{record.where} has no assistant message: nothing to learn")
        return parts
    if "prompt" not in record.fields and "response" not in record.fields:
        raise GptkitError(
            f"{record.where} needs fields prompt and response, or messages (a chat); "
            f"it has: {', '.join(record.fields) or 'nothing'}"
        )
    prompt = record.get("prompt")
    response = record.get("response")
    return [(prompt, False), (response + EOT, True)]


def generation_prompt(record: Record) -> tuple[str, str | None]:
    """(prompt to generate from, the expected answer if the record has one).

    Prompt/response: the prompt, and the response. Chat: the conversation up to its last
    assistant message, with the assistant header appended, and that message's content.
    A record's `reference` field, when present, is the expected answer instead.
    """
    reference = record.fields.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise GptkitError(f"{record.where}: field 'reference' must be text")
    if is_chat(record):
        messages = _messages(record)
        last = max((i for i, (role, _) in enumerate(messages) if role == "assistant"),
                   default=len(messages))
        prompt = "".join(
            _header(role) + content + (EOT if role == "assistant" else "\n")
            for role, content in messages[:last]
        )
        answer = messages[last][1] if last < len(messages) else None
        return prompt + _header("assistant"), reference if reference is not None else answer
    prompt = record.get("prompt")
    answer = record.fields.get("response")
    if answer is not None and not isinstance(answer, str):
        raise GptkitError(f"{record.where}: field 'response' must be text")
    return prompt, reference if reference is not None else answer
