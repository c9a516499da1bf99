"""`gptkit chat`: a conversation with a chat model in the terminal (`gptkit.chat.ChatSession`).

Typed at a terminal, each line is a message and the reply streams back; with stdin not a
terminal (a pipe, a file), each line read until the end is a message and only the replies are
printed, so a conversation can be scripted. Lines starting with `/` are commands. Notices
(turns dropped to fit, a stopped reply) go to stderr, so stdout holds only the replies.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from gptkit.cli import options
from gptkit.cli.sample import (
    PRECISION_HELP,
    QUANTIZE_HELP,
    add_generation_flags,
    settings_from_flags,
)
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig

if TYPE_CHECKING:
    from gptkit.chat import ChatSession

HELP = """commands:
  /reset        forget the conversation (the system prompt stays)
  /system TEXT  set the system prompt (/system alone shows it)
  /settings     show the generation settings
  /help         show this help
  /exit, /quit  leave (so does Ctrl-D); Ctrl-C stops a reply"""

# flags of `gptkit sample` a chat has no use for, and why
REFUSED = {
    "prompt": "--prompt: gptkit chat reads your messages, typed or piped on stdin one per line",
    "prompts_file": "--prompts-file: pipe the messages on stdin instead, one per line "
                    "(gptkit chat RUN < FILE)",
    "stream": "--stream: gptkit chat always streams its replies; leave it out",
    "length_penalty": "--length-penalty is a beam search setting, and a chat reply cannot use "
                      "beam search (it streams token by token)",
    "early_stopping": "--early-stopping is a beam search setting, and a chat reply cannot use "
                      "beam search (it streams token by token)",
}


def register(commands: Any) -> None:
    p = commands.add_parser(
        "chat", help="talk to a chat model in the terminal",
        description="A conversation with a run that has a chat template (a chat fine-tuned "
        "run, or an imported Hugging Face chat model): replies stream as they are generated, "
        "the history is kept (its oldest turns dropped when it outgrows the context) and "
        "lines starting with / are commands (/help). Generation defaults come from the run's "
        "sample settings, as for gptkit sample. With stdin not a terminal, each line is a "
        "message and only the replies are printed.",
    )
    options.add_run(p, help="run directory with a chat template")
    p.add_argument("--system", metavar="TEXT", help="system prompt (change it with /system)")
    add_generation_flags(p)
    for action in p._actions:  # parsed, so that asking for beams or samples gets a reason
        if action.dest in ("num_samples", "num_beams", "length_penalty", "early_stopping"):
            action.help = argparse.SUPPRESS
    # refused with a reason rather than argparse's "unrecognized arguments"
    p.add_argument("--prompt", action="append", help=argparse.SUPPRESS)
    p.add_argument("--prompts-file", help=argparse.SUPPRESS)
    p.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    options.add_inference(p, quantize=QUANTIZE_HELP, precision=PRECISION_HELP)
    options.add_draft(p)
    options.add_guard(p)
    p.set_defaults(handler=chat)


def chat_settings(args: argparse.Namespace, base: GenerationConfig) -> GenerationConfig:
    """The run's `sample` settings with the flags on top, as `gptkit sample` has them; what a
    streamed reply cannot do is an error naming the flag (or the run's setting)."""
    for name, why in REFUSED.items():
        if getattr(args, name, None) not in (None, False):
            raise GptkitError(why)
    if args.num_samples is not None and args.num_samples != 1:
        raise GptkitError(f"--num-samples {args.num_samples}: a chat gives one reply per "
                          "message; leave it out")
    if args.num_beams is not None and args.num_beams != 1:
        raise GptkitError(f"--num-beams {args.num_beams}: a chat reply streams token by token, "
                          "which beam search cannot; leave it out (--temperature 0 is greedy)")
    settings = settings_from_flags(args, base, [])
    for name, flag in (("num_beams", "--num-beams"), ("num_samples", "--num-samples")):
        if getattr(settings, name) != 1:
            raise GptkitError(f"the run's sample.{name} is {getattr(settings, name)}, which a "
                              f"streamed chat reply cannot use; give {flag} 1")
    return settings


def settings_text(session: ChatSession) -> str:
    """What `/settings` prints: every generation setting, the context and the system prompt."""
    shown = session.settings.model_dump(exclude={"prompt"})
    lines = [f"{name}: {json.dumps(value)}" for name, value in shown.items()]
    lines.append(f"context: {session.block_size} tokens")
    lines.append(f"system: {json.dumps(session.system)}")
    return "\n".join(lines)


def command(session: ChatSession, line: str, out: TextIO, err: TextIO) -> bool:
    """Carry out a /command; False when it ends the chat."""
    name, _, rest = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        print("(conversation cleared)", file=err)
    elif name == "/system":
        if rest.strip():
            session.set_system(rest.strip())
            print("(system prompt set)", file=err)
        else:
            print(session.system or "(no system prompt)", file=out)
    elif name == "/settings":
        print(settings_text(session), file=out)
    elif name == "/help":
        print(HELP, file=out)
    else:
        print(f"(unknown command {name}: /help lists the commands)", file=err)
    return True


def converse(session: ChatSession, lines: Iterable[str], out: TextIO, err: TextIO,
             interactive: bool) -> None:
    """Answer each message of `lines` (an iterator of lines; a terminal's ends at EOF)."""
    from gptkit.tokenizers import unknown_warning

    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            if not command(session, line.strip(), out, err):
                return
            continue
        warning = unknown_warning(session.tokenizer.unknown_characters([line]), "the message",
                                  fix="the model has never seen them")
        if warning:
            print(f"gptkit: {warning}", file=err)
        try:
            prompt = session.prepare(line)
        except GptkitError as exc:
            print(f"gptkit: {' '.join(str(exc).split())}", file=err)
            continue
        if prompt.dropped:
            turns = ("the oldest turn" if prompt.dropped == 1
                     else f"the {prompt.dropped} oldest turns")
            print(f"(dropped {turns} to fit the {session.block_size}-token context)", file=err)

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        reply = session.respond(prompt, stream=show)
        out.write("\n")
        out.flush()
        if reply.interrupted:
            print("(reply stopped)", file=err)
        if session.guard is not None:
            from gptkit.guard import Outcome, note

            said = note(session.guard, Outcome(reply.text, reply.regenerated, reply.withheld),
                        "the reply" if reply.withheld is None or not reply.text
                        else "the rest of the reply",
                        deterministic=(not session.settings.do_sample and session.retries > 0
                                       and not reply.text))
            if said:
                print(said, file=err)
    if interactive:
        out.write("\n")


def _typed() -> Iterator[str]:
    """Lines typed at a terminal (readline editing), until EOF."""
    while True:
        try:
            yield input("> ")
        except EOFError:
            return


def chat(args: argparse.Namespace) -> None:
    from gptkit.chat import ChatSession
    from gptkit.chat_template import require_chat_template
    from gptkit.tokenizers import unknown_warning

    template = require_chat_template(args.run)  # before loading the model: fail fast
    run = options.load_for_inference(args, precision="auto")
    settings = chat_settings(args, run.config.sample)
    speculative = options.load_draft(args, run)
    guard = options.load_guard(args)
    retries = 2 if args.guard_retries is None else args.guard_retries
    session = ChatSession(run.model, run.tokenizer, template, settings, system=args.system,
                          speculative=speculative, guard=guard, retries=retries)
    if args.system:
        warning = unknown_warning(run.tokenizer.unknown_characters([args.system]),
                                  "the system prompt", fix="the model has never seen them")
        if warning:
            print(f"gptkit: {warning}", file=sys.stderr)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.run} ({session.block_size}-token context); /help for "
              "commands, /exit or Ctrl-D to leave", file=sys.stderr)
    converse(session, _typed() if interactive else sys.stdin, sys.stdout, sys.stderr,
             interactive)
    if speculative is not None:
        print(speculative.stats.summary(), file=sys.stderr)
