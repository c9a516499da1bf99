"""A conversation with a chat model: the system prompt, the history, and the next reply.

`ChatSession` renders the conversation through the model's chat template
(`gptkit.chat_template.encode_chat`, with the generation prompt, so the ids are those of
transformers' `apply_chat_template`), makes it fit the model's context by dropping the oldest
turns (a turn: a user message and its reply) until the prompt plus `max_new_tokens` fits in
`block_size`, and generates the reply token by token, streamed. A reply ends at the model's
end-of-text token, at the template's end-of-turn text (ChatML's `<|im_end|>`: never shown,
never kept) and at the settings' own stop strings. `gptkit chat` is its terminal front end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gptkit.chat_template import ChatTemplate, Message, encode_chat, stop_strings
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate_tokens
from gptkit.generation.speculative import Speculative, speculative_tokens
from gptkit.generation.text import bad_words_ids, first_stop, showable
from gptkit.guard import OutputGuard, SentenceGate, Verdict
from gptkit.model import GPT
from gptkit.tokenizers import Tokenizer


@dataclass(frozen=True)
class Prompt:
    """What the model reads to answer `message`: the ids of the conversation that fits, and
    how many of the oldest turns had to be dropped for it (`ChatSession.prepare`)."""

    message: str
    ids: list[int]
    dropped: int


@dataclass(frozen=True)
class Reply:
    """The assistant's answer as kept in the history; `interrupted`: stopped by Ctrl-C (the
    text shown until then is kept); `regenerated`: answers the guard refused before this one;
    `withheld`: the guard's verdict when it stopped the answer (`text` is what was shown)."""

    text: str
    interrupted: bool = False
    regenerated: int = 0
    withheld: Verdict | None = None


class ChatSession:
    """One conversation with `model` in the format of `template`.

    `settings` are the generation settings of every reply; they must generate one text
    token by token (no beams, one sample), since replies stream. The template's end-of-turn
    text joins their stop strings (`settings` holds them all: what `/settings` shows).
    `speculative`: a draft model proposes the reply's tokens (`gptkit.generation.speculative`).
    `guard`: a classifier that checks each reply a sentence at a time (`gptkit.guard`); a reply
    that crosses before any of it was shown is regenerated up to `retries` times (when
    sampling: greedy decoding would give it again), else it ends before the sentence that
    crossed.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, template: ChatTemplate,
                 settings: GenerationConfig, system: str | None = None,
                 speculative: Speculative | None = None, guard: OutputGuard | None = None,
                 retries: int = 0) -> None:
        if settings.num_beams > 1 or settings.num_samples > 1:
            raise GptkitError(
                f"a chat reply is one text streamed token by token: num_beams "
                f"({settings.num_beams}) and num_samples ({settings.num_samples}) must be 1")
        block_size = model.config.block_size
        if not 0 < settings.max_new_tokens < block_size:
            raise GptkitError(
                f"max_new_tokens must be between 1 and {block_size - 1}, so that a reply fits "
                f"in the model's {block_size}-token context together with the conversation "
                f"(got {settings.max_new_tokens}); e.g. --max-new-tokens {block_size // 4 or 1}")
        stops = [*settings.stop]
        stops += [s for s in stop_strings(template, tokenizer) if s not in stops]
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings.replace(stop=stops)
        self.system = system or None
        self.speculative = speculative  # a draft model proposing tokens, or None
        self.guard = guard
        self.retries = retries
        self.history: list[Message] = []  # user, assistant, user, assistant, ...
        self.replies = 0  # replies generated so far: reply n samples with seed + n
        banned = bad_words_ids(tokenizer, settings.bad_words) + list(settings.bad_words_ids or [])
        self._decoding = self.settings.model_copy(
            update={"bad_words": [], "bad_words_ids": banned or None})

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def messages(self, message: str | None = None) -> list[Message]:
        """The conversation: system prompt, history and, if given, a new user message."""
        return self._conversation(self.history, message)

    def _conversation(self, history: list[Message], message: str | None) -> list[Message]:
        head: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        tail: list[Message] = [] if message is None else [{"role": "user", "content": message}]
        return [*head, *history, *tail]

    def reset(self) -> None:
        """Forget the history; the system prompt stays."""
        self.history.clear()

    def set_system(self, text: str | None) -> None:
        """A new system prompt (None or empty: none) for the turns to come."""
        self.system = text or None

    def encode(self, message: str, history: list[Message]) -> list[int]:
        """The prompt ids of `history` plus `message`, ready for the reply."""
        return encode_chat(self._conversation(history, message), self.tokenizer, self.template,
                           add_generation_prompt=True)

    def prepare(self, message: str) -> Prompt:
        """The prompt for `message` that leaves `max_new_tokens` of the context free, keeping
        as many of the latest turns as fit; a GptkitError if the message (with the system
        prompt) does not fit alone. The history is not changed until `respond`."""
        room = self.block_size - self.settings.max_new_tokens
        turns = len(self.history) // 2
        for dropped in range(turns + 1):
            ids = self.encode(message, self.history[2 * dropped :])
            if len(ids) <= room:
                return Prompt(message, ids, dropped)
        with_system = " with the system prompt" if self.system else ""
        raise GptkitError(
            f"this message takes {len(ids)} tokens{with_system}, more than the {room} the "
            f"model's {self.block_size}-token context leaves beside the reply's "
            f"{self.settings.max_new_tokens} new tokens; shorten it"
            f"{', or the system prompt' if self.system else ''}, or lower --max-new-tokens")

    def respond(self, prompt: Prompt, stream: Callable[[str], None] | None = None) -> Reply:
        """Generate the reply to a prepared prompt, drop the turns it left out and add the
        message and the reply to the history. `stream(piece)` receives the reply as it is
        generated (the pieces join to `Reply.text`); text that may be the start of a stop
        string is held back until it is known not to be one (under a guard, until its
        sentence is complete and scored). Ctrl-C (KeyboardInterrupt) stops the reply, which
        keeps the text shown so far."""
        regenerated = 0
        while True:
            gate = None if self.guard is None else self.guard.gate()
            text, interrupted, shown = self._attempt(prompt, stream, gate)
            if gate is None or gate.verdict is None or interrupted or shown \
                    or not self.settings.do_sample or regenerated >= self.retries:
                break
            regenerated += 1
        del self.history[: 2 * prompt.dropped]
        self.history += [{"role": "user", "content": prompt.message},
                         {"role": "assistant", "content": text}]
        return Reply(text, interrupted, regenerated, None if gate is None else gate.verdict)

    def _attempt(self, prompt: Prompt, stream: Callable[[str], None] | None,
                 gate: SentenceGate | None) -> tuple[str, bool, str]:
        """One generated reply: (its text, interrupted, the part streamed). Under a guard
        that it crosses, the text is what was streamed before the crossing."""
        eot_id, stops = self.tokenizer.eot_id, self.settings.stop
        seed = self.settings.seed
        # one seed gives the same conversation, yet each reply draws its own randomness
        decoding = self._decoding.model_copy(
            update={"seed": None if seed is None else seed + self.replies})
        self.replies += 1
        new: list[int] = []
        shown = ""
        interrupted = False
        try:
            spec = self.speculative
            tokens = (generate_tokens(self.model, prompt.ids, decoding, eot_id=eot_id)
                      if spec is None else
                      speculative_tokens(self.model, spec.draft, prompt.ids, decoding,
                                         eot_id=eot_id, draft_tokens=spec.tokens,
                                         stats=spec.stats))
            for token in tokens:
                t = int(token[0])
                if t == eot_id:
                    break
                new.append(t)
                text = self.tokenizer.decode(new)
                if first_stop(text, stops) is not None:
                    break
                visible = text[: showable(text, stops)]
                if gate is not None:
                    allowed = gate.release(visible)
                    if allowed is None:
                        return shown, False, shown  # crossed: its sentence is never shown
                    visible = visible[:allowed]
                if stream is not None and len(visible) > len(shown) \
                        and visible.startswith(shown):
                    piece, shown = visible[len(shown) :], visible
                    stream(piece)  # shown first: Ctrl-C may interrupt it
        except KeyboardInterrupt:
            interrupted = True
        if interrupted:
            return shown, True, shown
        text = self.tokenizer.decode(new)
        at = first_stop(text, stops)
        reply = text if at is None else text[:at]
        if gate is not None and not gate.finish(reply):
            return shown, False, shown
        if stream is not None and len(reply) > len(shown) and reply.startswith(shown):
            stream(reply[len(shown) :])
        return reply, False, shown

    def reply(self, message: str, stream: Callable[[str], None] | None = None) -> Reply:
        """`respond(prepare(message))`: the next reply, in one call."""
        return self.respond(self.prepare(message), stream)
