"""A model's chat format: a Jinja template over messages, stored and run as Hugging Face does.

The template travels with the model so that every tool renders a conversation the way the
model was fine-tuned on it: a chat fine-tuning run writes it to its `tokenizer_config.json`
(`chat_template`, like a Hugging Face tokenizer folder), `gptkit export` copies it there, and
`gptkit import` keeps an imported model's own. It is rendered here the way transformers'
`apply_chat_template` renders it (a sandboxed Jinja environment with `trim_blocks` and
`lstrip_blocks`, the special tokens as variables), and the text is encoded whole, without
added special tokens: `encode_chat` gives exactly the ids of
`AutoTokenizer.from_pretrained(export).apply_chat_template(messages, ...)`.

gptkit's own format (`DEFAULT_CHAT_TEMPLATE`), each message in turn:

    <|system|>\\n{content}\\n
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}<|endoftext|>

and `<|assistant|>\\n` as the generation prompt: the model's end-of-text token ends its turn.

What fine-tuning learns is found from the template itself, so it works for any template that
renders a conversation as a growing prefix: the text an assistant message adds after the
generation prompt that precedes it (its content and end-of-turn) is learnt, the rest read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gptkit.errors import GptkitError
from gptkit.rundir import RunDir
from gptkit.tokenizers import EOT, Tokenizer

ROLES = ("system", "user", "assistant")

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role must be system, user or assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<|endoftext|>' }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

Message = dict[str, str]
Segments = list[tuple[str, bool]]  # (text, learnt?)


def check_messages(messages: Any, where: str) -> list[Message]:
    """`messages` as a list of {role, content}, or one GptkitError naming the bad one."""
    if not isinstance(messages, list) or not messages:
        raise GptkitError(f"{where}: messages must be a non-empty list of objects with role "
                          "and content")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise GptkitError(f"{where}: messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise GptkitError(f"{where}: messages[{i}].role must be one of "
                              f"{', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            raise GptkitError(f"{where}: messages[{i}].content must be text")
        out.append({"role": role, "content": content})
    return out


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """The special tokens a Hugging Face tokenizer of ours names (tokenizer_config.json), which
    are also the variables a template sees (`eos_token`, ...).

    Only EOT is named: transformers turns every named special token into an added token, so
    naming the char tokenizer's `<unk>` would make a literal "<unk>" in text one token for
    transformers but five characters for gptkit.
    """
    if tokenizer.eot_id is None:
        return {}
    special = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    if tokenizer.kind == "bpe":
        special["unk_token"] = EOT  # as GPT-2's own tokenizer (byte-level BPE never needs it)
    return special


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    """A Jinja chat template (`source`); `where` names its origin in error messages."""

    def __init__(self, source: str, where: str = "gptkit's chat format") -> None:
        self.source = source
        self.where = where

    @cached_property
    def _compiled(self) -> jinja2.Template:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise GptkitError(f"the chat template of {self.where} is not valid Jinja ({exc}); "
                              "fix its chat_template") from None

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False,
               special: dict[str, str] | None = None) -> str:
        """The conversation as text; with `add_generation_prompt`, ready for the reply."""
        try:
            return self._compiled.render(messages=list(messages),
                                         add_generation_prompt=add_generation_prompt,
                                         **(special or {"eos_token": EOT, "bos_token": EOT}))
        except jinja2.TemplateError as exc:
            raise GptkitError(f"the chat template of {self.where} refused the conversation: "
                              f"{exc}") from None

    def segments(self, messages: Sequence[Message], where: str = "the conversation",
                 special: dict[str, str] | None = None) -> Segments:
        """The finished conversation's text in parts that are learnt (what each assistant
        message adds after its generation prompt) or only read; they join into `render`."""
        text = self.render(messages, special=special)
        parts: Segments = []
        done = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True, special=special)
            turn = self.render(messages[: i + 1], special=special)
            if not (turn.startswith(prompt) and text.startswith(turn) and len(prompt) >= done):
                raise GptkitError(
                    f"{where}: the chat template of {self.where} does not render the "
                    "conversation as a growing prefix, so the assistant's turns cannot be "
                    "told apart for fine-tuning; use a template that does"
                )
            parts += [(text[done : len(prompt)], False), (turn[len(prompt) :], True)]
            done = len(turn)
        if not any(learnt for _, learnt in parts):
            raise GptkitError(f"{where} has no assistant message: nothing to learn")
        parts.append((text[done:], False))
        return [(part, learnt) for part, learnt in parts if part]


    def end_of_turn(self, special: dict[str, str] | None = None) -> str | None:
        """The text that ends an assistant turn in this format (ChatML's `<|im_end|>`), found
        by rendering a reply: what follows its content, up to any end-of-text token and without
        surrounding whitespace. None when the end-of-text token alone ends the turn (gptkit's
        format: generation stops at that token anyway) or nothing marks its end."""
        special = special if special is not None else {"eos_token": EOT, "bos_token": EOT}
        reply = "\u2063gptkit-reply\u2063"  # text no real reply contains
        asked: list[Message] = [{"role": "user", "content": "hi"}]
        prompt = self.render(asked, add_generation_prompt=True, special=special)
        turn = self.render([*asked, {"role": "assistant", "content": reply}], special=special)
        if not turn.startswith(prompt) or reply not in turn[len(prompt) :]:
            return None  # not a growing prefix: no end marker can be told apart
        end = turn[len(prompt) :].split(reply, 1)[1]
        end = end.split(special.get("eos_token", EOT), 1)[0].strip()
        return end or None


def stop_strings(template: ChatTemplate, tokenizer: Tokenizer) -> list[str]:
    """Stop strings that end a generated assistant turn: the template's end-of-turn text,
    unless the model's end-of-text token already ends it."""
    end = template.end_of_turn(special_tokens(tokenizer))
    return [] if end is None else [end]


def default_chat_template() -> ChatTemplate:
    """gptkit's own chat format, which chat fine-tuning uses unless its base model has one."""
    return ChatTemplate(DEFAULT_CHAT_TEMPLATE)


def encode_segments(parts: Segments, tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """The joined text's ids, encoded whole as transformers does, and which are learnt: a token
    is learnt when it holds a character of a learnt part."""
    text = "".join(part for part, _ in parts)
    learnt_chars: list[tuple[int, int]] = []
    start = 0
    for part, learnt in parts:
        if learnt:
            learnt_chars.append((start, start + len(part)))
        start += len(part)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    learnt_ids = [any(s < b and e > a for a, b in learnt_chars) for s, e in encoding.offsets]
    return list(encoding.ids), learnt_ids


def encode_chat(messages: Sequence[Message], tokenizer: Tokenizer, template: ChatTemplate,
                *, add_generation_prompt: bool = False) -> list[int]:
    """The ids of a conversation through its template: what the model reads (with
    `add_generation_prompt`, before it answers) and what chat fine-tuning trains on (without,
    on a finished conversation). The same ids as transformers' `apply_chat_template`."""
    text = template.render(messages, add_generation_prompt=add_generation_prompt,
                           special=special_tokens(tokenizer))
    return tokenizer.encode(text)


# --- stored with a run --------------------------------------------------------------------------
def read_chat_template(folder: str | Path) -> ChatTemplate | None:
    """The chat template stored in a run or Hugging Face folder: `chat_template` of its
    tokenizer_config.json (a string, or the one named "default" of a list), else the
    `chat_template.jinja` file newer transformers write; None when it has none."""
    run = RunDir(folder)
    config = run.tokenizer_config()
    value = None if config is None else config.get("chat_template")
    if isinstance(value, list):
        value = next((t.get("template") for t in value
                      if isinstance(t, dict) and t.get("name") == "default"), None)
    if isinstance(value, str) and value:
        return ChatTemplate(value, str(run.tokenizer_config_file))
    jinja_file = run.path / "chat_template.jinja"
    if jinja_file.is_file():
        return ChatTemplate(jinja_file.read_text(encoding="utf-8"), str(jinja_file))
    return None


def require_chat_template(run_dir: str | Path) -> ChatTemplate:
    """The run's chat template, or one GptkitError saying it has none and how to get one."""
    template = read_chat_template(run_dir)
    if template is None:
        raise GptkitError(
            f"{run_dir} has no chat template (chat_template in its tokenizer_config.json), "
            "so it cannot chat: fine-tune it on chat records ({\"messages\": [...]}, "
            "gptkit finetune), or import a Hugging Face chat model that has one"
        )
    return template


def write_chat_template(run_dir: str | Path, template: ChatTemplate) -> None:
    """Store `template` with the run, in its tokenizer_config.json (kept other keys)."""
    run = RunDir(run_dir)
    config = run.tokenizer_config() or {}
    config["chat_template"] = template.source
    run.write_tokenizer_config(config)
