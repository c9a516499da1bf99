"""`gptkit sample`: generate text from a run, from its sample settings and the flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.cli import options
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig

if TYPE_CHECKING:
    from gptkit.generation.speculative import Speculative
    from gptkit.guard import OutputGuard
    from gptkit.run import Run

# the help of --quantize and --precision, which `gptkit chat` shares
QUANTIZE_HELP = (
    f"{options.INT8_HELP}: weights about 3.5x smaller in memory. Faster only for wide models: "
    "batch-1 generation measured 0.90x to 1.08x the fp32 speed (median 0.97x) on the default "
    "recipe's 0.8M-parameter model, 3.1x on a 6-layer, 384-wide GPT-2 with its 50,257-token "
    "vocabulary (docs/design.md, int8)")
PRECISION_HELP = (
    "weights' dtype for generation; auto (default): bf16 on GPUs and on CPUs with bf16 matrix "
    "instructions for models of at least 2M parameters (about 2x faster per token there), "
    "else fp32")


def register(commands: Any) -> None:
    p = commands.add_parser(
        "sample", help="generate text from a run",
        description="Generate text from a run's model. Defaults come from the run's sample "
        "settings.",
    )
    options.add_run(p)
    p.add_argument("--prompt", action="append",
                   help="text to continue; repeat it for a batch of prompts generated together "
                   "(default: the run's sample.prompt; none = start from the end-of-text token)")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="a batch of prompts, one per line (blank lines skipped), added after "
                   "any --prompt")
    add_generation_flags(p)
    p.add_argument("--stream", action="store_true", help="print text as it is generated "
                   "(beam search: when the search ends)")
    options.add_inference(p, quantize=QUANTIZE_HELP, precision=PRECISION_HELP)
    options.add_draft(p)
    options.add_guard(p)
    p.set_defaults(handler=sample)


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    """The generation settings as flags (each a `GenerationConfig` field, read by
    `settings_from_flags`): `gptkit sample` and `gptkit chat` take the same ones."""
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate per sample")
    p.add_argument("--min-new-tokens", type=int,
                   help="forbid the end-of-text token until this many new tokens (0 = off)")
    p.add_argument("--temperature", type=float,
                   help="0 = greedy (or plain beam search); higher = more random")
    p.add_argument("--top-k", type=int, help="sample among the K most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with this "
                   "probability mass, in (0, 1]")
    p.add_argument("--typical-p", type=float,
                   help="typical sampling: keep the tokens whose surprise is closest to the "
                   "entropy, up to this probability mass, in (0, 1] (1 = off)")
    p.add_argument("--repetition-penalty", type=float,
                   help="> 1 makes tokens already in the text (prompt included) less likely, "
                   "< 1 more likely (1 = off; 1.2 is a common choice)")
    p.add_argument("--frequency-penalty", type=float,
                   help="OpenAI's: lower a token's score by this much per time it occurs in "
                   "the generated text (not the prompt), in [-2, 2] (0 = off)")
    p.add_argument("--presence-penalty", type=float,
                   help="OpenAI's: lower a token's score by this much once it occurs in the "
                   "generated text (not the prompt), in [-2, 2] (0 = off)")
    p.add_argument("--logit-bias", action="append", metavar="ID=BIAS",
                   help="add BIAS (-100 to 100) to token ID's score at every step; -100 in "
                   "effect bans it (repeatable)")
    p.add_argument("--no-repeat-ngram-size", type=int, metavar="N",
                   help="never repeat a sequence of N tokens, prompt included (0 = off)")
    p.add_argument("--bad-words", action="append", metavar="TEXT",
                   help="a word or phrase never to generate, e.g. to filter unwanted or toxic "
                   "text (also banned after a space); repeatable. It bans these token sequences: "
                   "a model could still spell the word with other tokens")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="stop a sample once its new text contains TEXT; the text ends before it "
                   "(repeatable; e.g. --stop $'\\n\\n' in bash for a blank line)")
    p.add_argument("--num-samples", "--num-return-sequences", dest="num_samples", type=int,
                   help="samples per prompt; with beam search, how many of the best beams to "
                   "show (at most --num-beams)")
    p.add_argument("--num-beams", type=int,
                   help="> 1: beam search with this many beams (with --temperature > 0: beam "
                   "sampling); 1 = off")
    p.add_argument("--length-penalty", type=float,
                   help="beam search: a text's score is its log-probability / new tokens ** "
                   "this; > 0 favours longer texts, < 0 shorter (default 1)")
    p.add_argument("--early-stopping", choices=("true", "false", "never"),
                   help="beam search: true = stop once --num-beams texts have ended; false = "
                   "once the best open beam, scored at its current length, cannot beat them; "
                   "never = only once no open beam could (default: false)")
    p.add_argument("--seed", type=int,
                   help="random seed: the same seed gives the same text. Without it each call "
                   "draws fresh randomness, as gptkit serve (a request without a seed), "
                   "transformers' pipeline and llama.cpp do: a sampler asked again is asked "
                   "for another text (the run's sample.seed seeds only the samples training "
                   "writes to samples.txt)")


def settings_from_flags(args: argparse.Namespace, base: GenerationConfig,
                        prompts: list[str]) -> GenerationConfig:
    """The run's `sample` settings with the flags given on top, checked and named as flags."""
    chosen: dict[str, Any] = {
        "prompt": prompts[0] if len(prompts) == 1 else None,
        "max_new_tokens": args.max_new_tokens, "min_new_tokens": args.min_new_tokens,
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "typical_p": args.typical_p, "repetition_penalty": args.repetition_penalty,
        "frequency_penalty": args.frequency_penalty,
        "presence_penalty": args.presence_penalty, "logit_bias": _logit_bias(args.logit_bias),
        "no_repeat_ngram_size": args.no_repeat_ngram_size, "bad_words": args.bad_words,
        "stop": args.stop, "num_samples": args.num_samples, "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "early_stopping": {"true": True, "false": False}.get(args.early_stopping,
                                                             args.early_stopping),
    }
    changes = {k: v for k, v in chosen.items() if v is not None}
    changes["seed"] = args.seed  # None: fresh randomness (see --seed)
    if args.top_k == 0:
        changes["top_k"] = None
    try:
        return base.replace(prefix="--", **changes)
    except GptkitError as exc:
        raise GptkitError(str(exc).replace("_", "-")) from None


def _logit_bias(items: list[str] | None) -> dict[int, float] | None:
    """--logit-bias ID=BIAS flags as a mapping."""
    if not items:
        return None
    bias: dict[int, float] = {}
    for item in items:
        token, _, value = item.partition("=")
        try:
            bias[int(token)] = float(value)
        except ValueError:
            raise GptkitError(f"--logit-bias takes ID=BIAS, a token id and a number, e.g. "
                              f"--logit-bias 50256=-100 (got {item!r})") from None
    return bias


def sample(args: argparse.Namespace) -> None:
    from gptkit.generation.text import sample_text
    from gptkit.tokenizers import unknown_warning

    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise GptkitError(f"--prompts-file {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise GptkitError(f"--prompts-file {path} is not UTF-8 text (byte {exc.start}: "
                              f"{exc.reason}); save it as UTF-8") from None
        prompts += [line for line in lines if line.strip()]
        if not prompts:
            raise GptkitError(f"--prompts-file {path} holds no prompts; write one per line")
    run = options.load_for_inference(args, precision="auto")
    own = prompts[0] if len(prompts) == 1 else run.config.sample.prompt
    texts = prompts if len(prompts) > 1 else [own or ""]
    warning = unknown_warning(run.tokenizer.unknown_characters(texts), "the prompt", fix=(
        "the model has never seen them; leave them out, or use a run whose tokenizer has "
        "them (e.g. one trained with data.tokenizer=bpe)"))
    if warning:
        print(f"gptkit: {warning}", file=sys.stderr)
    settings = settings_from_flags(args, run.config.sample, prompts)
    speculative = options.load_draft(args, run)
    if speculative is not None and settings.num_beams > 1:
        raise GptkitError(f"--draft cannot be used with beam search (--num-beams "
                          f"{settings.num_beams}); leave out one of them")
    prompt: str | None | list[str] = prompts if len(prompts) > 1 else settings.prompt
    guard = options.load_guard(args)
    separator = "\n" + "-" * 40 + "\n"
    if args.stream:
        # samples advance together; the first is shown live, the others once it is done
        later: dict[int, list[str]] = {}

        def show(index: int, piece: str) -> None:
            if index == 0:
                sys.stdout.write(piece)
                sys.stdout.flush()
            else:
                later.setdefault(index, []).append(piece)

        gated = None if guard is None else _GatedStream(guard, _heads(prompt, settings), show)
        texts = sample_text(run.model, run.tokenizer, prompt, settings,
                            stream=show if gated is None else gated.piece,
                            speculative=speculative)
        notes = [] if gated is None else gated.finish(texts)
        for index in sorted(later):
            sys.stdout.write(separator + "".join(later[index]))
        sys.stdout.write("\n")
    else:
        texts = sample_text(run.model, run.tokenizer, prompt, settings, speculative=speculative)
        notes = [] if guard is None else _guard_texts(
            guard, texts, args, run, prompt, settings, speculative)
        print(separator.join(texts))
    for line in notes:
        print(line, file=sys.stderr)
    if speculative is not None:
        print(speculative.stats.summary(), file=sys.stderr)


def _heads(prompt: str | None | list[str], settings: GenerationConfig) -> list[str]:
    """The prompt each sample starts with (`sample_text`'s rows)."""
    prompts = [prompt] if prompt is None or isinstance(prompt, str) else prompt
    return [p or "" for p in prompts for _ in range(settings.num_samples)]


def _guard_texts(guard: OutputGuard, texts: list[str], args: argparse.Namespace, run: Run,
                 prompt: str | None | list[str], settings: GenerationConfig,
                 speculative: Speculative | None) -> list[str]:
    """OutputGuard finished samples in place (each continuation scored; one that crosses is
    regenerated up to --guard-retries times, then withheld); the notes of what happened."""
    from gptkit.generation.text import sample_text
    from gptkit.guard import guarded, note

    heads = _heads(prompt, settings)
    retries = 2 if args.guard_retries is None else args.guard_retries
    deterministic = not settings.do_sample
    notes = []
    for i, (head, text) in enumerate(zip(heads, texts, strict=True)):
        def again(attempt: int, i: int = i, head: str = head) -> str:
            seed = None if settings.seed is None else settings.seed + attempt * len(heads) + i
            one = settings.replace(num_samples=1, seed=seed)
            new = sample_text(run.model, run.tokenizer, head or None, one,
                              speculative=speculative)[0]
            return new[len(head):]

        outcome = guarded(guard, text[len(head):], None if deterministic else again, retries)
        texts[i] = head + outcome.text
        line = note(guard, outcome, f"sample {i + 1}", deterministic and retries > 0)
        if line:
            notes.append(line)
    return notes


class _GatedStream:
    """`gptkit sample --stream` under a guard: each sample's prompt is shown at once, its
    continuation a scored sentence at a time (`gptkit.guard.SentenceGate`); a sample whose
    next sentence crosses the threshold stops before it (too late to regenerate it)."""

    def __init__(self, guard: OutputGuard, heads: list[str], show: Callable[[int, str], None]
                 ) -> None:
        self.guard, self.heads, self.show = guard, heads, show
        self.gates = [guard.gate() for _ in heads]
        self.text = ["" for _ in heads]  # streamed to us
        self.out = [0 for _ in heads]  # characters passed on

    def piece(self, index: int, piece: str) -> None:
        self.text[index] += piece
        head = self.heads[index]
        allowed = len(self.text[index]) if len(self.text[index]) <= len(head) else None
        if allowed is None:
            released = self.gates[index].release(self.text[index][len(head):])
            allowed = None if released is None else len(head) + released
        self._pass(index, self.text[index], allowed)

    def _pass(self, index: int, text: str, upto: int | None) -> None:
        if upto is not None and upto > self.out[index]:
            self.show(index, text[self.out[index]:upto])
            self.out[index] = upto

    def finish(self, texts: list[str]) -> list[str]:
        """Score each whole sample, show the rest of those that pass; the notes."""
        from gptkit.guard import Outcome, note

        notes = []
        for i, (head, text) in enumerate(zip(self.heads, texts, strict=True)):
            gate = self.gates[i]
            if gate.finish(text[len(head):]):
                self._pass(i, text, len(text))
                continue
            line = note(self.guard, Outcome(text[len(head):self.out[i]], 0, gate.verdict),
                        f"the rest of sample {i + 1}")
            if line:
                notes.append(line)
        return notes
