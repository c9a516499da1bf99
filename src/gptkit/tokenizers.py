"""One tokenizer interface over characters, trained byte-level BPE and GPT-2's BPE files.

Every kind is a Hugging Face `tokenizers.Tokenizer`, so encoding runs in Rust (in parallel
for batches), every kind is stored the same way (`tokenizer.json`) and exports to
`transformers` without conversion.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers

from gptkit.config import DataConfig
from gptkit.errors import GptkitError

EOT = "<|endoftext|>"
UNK = "<unk>"  # char tokenizer only
GPT2_TOKENIZER_URL = "https://huggingface.co/openai-community/gpt2/resolve/main/tokenizer.json"

# Where text can be cut without changing its encoding (see `Tokenizer.split_text`).
# Char level: after any newline (never inside the EOT string).
_CHAR_CUT = re.compile(r"(?<=\n)")


def _byte_level_cut(added_tokens: Iterable[str]) -> re.Pattern[str]:
    r"""Cuts for GPT-2's pre-tokenizer regex, where it ends a pre-token whatever follows.

    That is a newline touching the cut, whitespace on both sides of it and a non-space after
    the run (the regex gives the run but its last character to one token); or a lone newline
    between non-spaces. The non-space must not start an added token (which is split off
    before the regex runs). Python's `\s` covers every character the Rust regex calls
    whitespace (checked over all of Unicode).
    """
    avoid = "".join(f"(?!{re.escape(token)})" for token in added_tokens)
    return re.compile(
        rf"(?<=\n)(?=[ \t\r\n]{avoid}\S)|(?<=[ \t\r])(?=\n{avoid}\S)|(?<=\S\n)(?={avoid}\S)"
    )


_ANY_CHAR = r"[\s\S]"  # any character, newlines included
_BYTE_LEVEL_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def _cut(text: str, max_chars: int, cut: re.Pattern[str]) -> Iterator[str]:
    """Pieces of about `max_chars` characters, each ending where `cut` allows."""
    start = 0
    while len(text) - start > max_chars:
        match = cut.search(text, start + max_chars)
        if match is None or match.start() >= len(text):
            break
        yield text[start : match.start()]
        start = match.start()
    yield text[start:]


def _cut_stream(
    chunks: Iterable[str], max_chars: int, cut: re.Pattern[str] | None, margin: int
) -> Iterator[str]:
    """`_cut` over the text `chunks` join into, holding about `max_chars` of it at a time.

    A cut is taken only with `margin` characters after it in hand, enough for every lookahead
    of the rule, so it is one `_cut` could take in the whole text. Without a rule the whole
    text is one piece (there is no safe place to cut it).
    """
    if cut is None:
        yield "".join(chunks)
        return
    max_chars = max(max_chars, 1)
    buffer, start, pos = "", 0, 0  # the piece under way starts at `start`
    for chunk in chunks:
        if not chunk:
            continue
        buffer, pos, start = buffer[start:] + chunk, max(pos - start, 0), 0
        while len(buffer) - start > max_chars:
            searched = max(pos, start + max_chars)
            match = cut.search(buffer, searched)
            if match is None:  # the last `margin` characters may still cut once more arrives
                pos = max(searched, len(buffer) - margin)
                break
            if match.start() + margin > len(buffer):
                pos = match.start()
                break
            yield buffer[start : match.start()]
            start = pos = match.start()
    yield buffer[start:]


def training_pieces(chunks: Iterable[str], max_chars: int = 1 << 16) -> Iterator[str]:
    """One document's text (in chunks) as pieces to train a tokenizer on, read as it goes.

    Cut where GPT-2's pre-tokenizer ends a word whatever follows (never inside EOT), so a
    BPE trainer counts the same words as in the whole text and a character vocabulary sees
    the same characters.
    """
    return _cut_stream(chunks, max_chars, _byte_level_cut([EOT]), len(EOT) + 2)


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` (HF). Every kind is stored as HF tokenizer.json."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        self.backend = backend
        spec = json.loads(backend.to_str())
        self.kind = "char" if spec["model"]["type"] == "WordLevel" else "bpe"
        self._cut = self._cut_rule(spec)
        # characters a cut must see beyond itself: the rule's lookahead (whitespace, then an
        # added token that must not start there, then a non-space)
        longest = max((len(t["content"]) for t in spec.get("added_tokens", [])), default=0)
        self._cut_margin = longest + 2
        self._char_table = self._char_lookup(spec)

    def _char_lookup(self, spec: dict[str, Any]) -> np.ndarray | None:
        """Code point -> id, for a char tokenizer of ours: encoding becomes one numpy gather
        instead of HF's token object per character (measured ~17x slower in `prepare`)."""
        added = [t["content"] for t in spec.get("added_tokens", [])]
        if self._cut is not _CHAR_CUT or added != [EOT]:
            return None
        vocab: dict[str, int] = spec["model"]["vocab"]
        singles = {ord(c): i for c, i in vocab.items() if len(c) == 1}
        # one slot past the largest known code point: where every unknown character lands
        table = np.full(max(singles, default=0) + 2, vocab[spec["model"]["unk_token"]], np.int64)
        table[list(singles)] = list(singles.values())
        return table

    def _encode_chars(self, table: np.ndarray, text: str) -> np.ndarray:
        pieces: list[np.ndarray] = []
        for i, part in enumerate(text.split(EOT)):  # EOT in the text is the special token
            if i:
                pieces.append(np.array([self.backend.token_to_id(EOT)], np.int64))
            codes = np.frombuffer(part.encode("utf-32-le"), dtype=np.uint32)
            pieces.append(table[np.minimum(codes, len(table) - 1)])
        return np.concatenate(pieces)

    def _cut_rule(self, spec: dict[str, Any]) -> re.Pattern[str] | None:
        """The cut rule when this tokenizer is one we know how to cut safely, else None."""
        added = spec.get("added_tokens", [])
        if spec.get("normalizer") is not None or any(
            re.search(r"\s", t["content"]) or t["lstrip"] or t["rstrip"] or t["single_word"]
            for t in added
        ):
            return None
        pre = spec.get("pre_tokenizer") or {}
        if self.kind == "char" and pre.get("pattern") == {"Regex": _ANY_CHAR}:
            return _CHAR_CUT
        byte_level = all(pre.get(k) == v for k, v in _BYTE_LEVEL_PRE_TOKENIZER.items())
        if self.kind == "bpe" and byte_level:
            return _byte_level_cut(t["content"] for t in added)
        return None

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> Tokenizer:
        """Vocabulary: the sorted characters of `texts`, then EOT and UNK (unknown characters)."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        vocab = {c: i for i, c in enumerate(sorted(chars))}
        vocab[EOT] = len(vocab)
        vocab[UNK] = len(vocab)
        backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        backend.pre_tokenizer = _char_pre_tokenizer()
        backend.decoder = decoders.Fuse()  # join characters without spaces
        backend.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        return cls(backend)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Byte-level BPE like GPT-2's: any text round-trips, EOT is a special token."""
        backend = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[AddedToken(EOT, special=True, normalized=False)],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # Pieces cut where pre-tokens end give the same word counts as whole texts, in parallel.
        cut = _byte_level_cut([EOT])
        pieces = (p for text in texts for p in _cut(text, 1 << 16, cut))
        backend.train_from_iterator(pieces, trainer)
        return cls(backend)

    @classmethod
    def from_gpt2_files(cls, path: str | Path) -> Tokenizer:
        """GPT-2's tokenizer: a tokenizer.json, or a folder with it or vocab.json + merges.txt."""
        path = Path(path)
        if path.is_file():
            return cls.load(path)
        if (path / "tokenizer.json").is_file():
            return cls.load(path / "tokenizer.json")
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise GptkitError(
                f"no GPT-2 tokenizer files at {path}: expected a tokenizer.json file, or a folder "
                "holding tokenizer.json or vocab.json and merges.txt (data.tokenizer_path)"
            )
        try:
            model = models.BPE.from_file(str(vocab), str(merges))
        except Exception as exc:
            raise GptkitError(
                f"cannot read GPT-2 vocab.json/merges.txt in {path}: {exc}; use the files "
                "of a GPT-2 tokenizer"
            ) from exc
        backend = _byte_level(model)
        backend.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A tokenizer.json written by `save` (or by Hugging Face)."""
        path = Path(path)
        if not path.is_file():
            raise GptkitError(f"tokenizer file {path} does not exist")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GptkitError(
                f"{path} is not a valid tokenizer.json ({message}); save it again with gptkit "
                "or Hugging Face tokenizers"
            ) from exc
        return cls(backend)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path))

    def encode(self, text: str) -> list[int]:
        try:
            if self._char_table is not None:
                return self._encode_chars(self._char_table, text).tolist()
            return self.backend.encode(text, add_special_tokens=False).ids
        except (UnicodeEncodeError, TypeError):
            check_unicode(text)  # names a lone surrogate, the usual cause
            raise

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes the texts in parallel (Rust threads)."""
        return [ids.tolist() for ids in self.encode_arrays(texts)]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """`encode_batch` as int64 arrays, the form token files are written from."""
        if self._char_table is not None:
            return [self._encode_chars(self._char_table, text) for text in texts]
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens included, so decode(encode(text)) == text."""
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def split_text(self, text: str, max_chars: int = 1 << 20) -> list[str]:
        """Pieces of `text` (about `max_chars` long) whose encodings concatenate to encode(text).

        Lets long documents go through `encode_batch` in parallel. A tokenizer we do not know
        how to cut (e.g. a foreign tokenizer.json with a normalizer) gets the whole text back.
        """
        if self._cut is None:
            return [text]
        return list(_cut(text, max_chars, self._cut))

    def split_stream(self, chunks: Iterable[str], max_chars: int = 1 << 20) -> Iterator[str]:
        """`split_text` of the text `chunks` join into, without holding all of it.

        For documents too long to hold: the pieces' encodings still concatenate to the whole
        text's. Memory stays about `max_chars` unless the text has no place to cut.
        """
        return _cut_stream(chunks, max_chars, self._cut, self._cut_margin)

    def unknown_characters(self, texts: Iterable[str]) -> collections.Counter[str]:
        """Characters of `texts` this tokenizer has no token for: they encode as <unk>.

        Only a character tokenizer has them; byte-level BPE (bpe, gpt2) encodes any text.
        """
        counts: collections.Counter[str] = collections.Counter()
        if self.backend.token_to_id(UNK) is None:
            return counts
        for text in texts:
            check_unicode(text)  # a lone surrogate has no character to look up
            text = text.replace(EOT, "")
            missing = {c for c in set(text) if self.backend.token_to_id(c) is None}
            if missing:
                counts.update(c for c in text if c in missing)
        return counts

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int | None:
        return self.backend.token_to_id(EOT)

    def sha256(self) -> str:
        """Hash of the serialised tokenizer, for cache keys."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()


def _char_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Each code point its own pre-token."""
    return pre_tokenizers.Split(Regex(_ANY_CHAR), "isolated")


def _byte_level(model: models.Model) -> tokenizers.Tokenizer:
    """GPT-2's pipeline around `model`: byte-level pre-tokenizer, decoder, post-processor."""
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def check_unicode(text: str) -> None:
    """Refuse text that is not Unicode: a lone surrogate, such as "\\ud800" in a JSON request
    or a byte that is not UTF-8 on the command line, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GptkitError(
            f"the text holds {text[exc.start]!r} at character {exc.start}, a lone surrogate "
            "that is no Unicode character (broken UTF-16, or bytes that are not UTF-8); "
            "remove it or send valid UTF-8"
        ) from None


def build_tokenizer(
    cfg: DataConfig, train_texts: Iterable[str], *, data_dir: str | Path | None = None
) -> Tokenizer:
    """The tokenizer `cfg.tokenizer` asks for, trained on `train_texts` where it learns.

    `train_texts` are documents, or pieces of them from `training_pieces` (read once).
    """
    if cfg.tokenizer == "char":
        return Tokenizer.train_char(train_texts)
    if cfg.tokenizer == "bpe":
        return Tokenizer.train_bpe(train_texts, cfg.vocab_size)
    if cfg.tokenizer == "gpt2":
        if cfg.tokenizer_path is not None:
            return Tokenizer.from_gpt2_files(cfg.tokenizer_path)
        return Tokenizer.from_gpt2_files(_gpt2_in_data_root(data_dir))
    raise GptkitError(f"data.tokenizer must be char, bpe or gpt2 (got {cfg.tokenizer!r})")


def _gpt2_in_data_root(data_dir: str | Path | None) -> Path:
    """`<data root>/gpt2`, holding GPT-2's tokenizer files (downloaded when missing)."""
    from gptkit.data.sources import data_root, download

    folder = data_root(data_dir) / "gpt2"
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        download(
            GPT2_TOKENIZER_URL, folder / "tokenizer.json",
            what="GPT-2's tokenizer (tokenizer.json, or vocab.json and merges.txt; or set "
            "data.tokenizer_path)",
        )
    return folder


TOKENIZER_FIX = ("train the tokenizer on text that has them (data.train_split), or use a "
                 "byte-level tokenizer (data.tokenizer=bpe or gpt2), which has no unknown "
                 "characters")


def unknown_warning(counts: collections.Counter[str] | dict[str, int], where: str,
                    total: int | None = None, fix: str = TOKENIZER_FIX) -> str | None:
    """One line saying how many characters of `where` become <unk> (`total`, else the sum of
    `counts`), with the commonest as examples and the fix; None when there are none."""
    total = sum(counts.values()) if total is None else total
    if not total:
        return None
    common = sorted(counts.items(), key=lambda item: -item[1])[:5]
    examples = ", ".join(repr(c) for c, _ in common)
    many = total != 1
    return (f"warning: {total:,} character{'s' if many else ''} in {where} "
            f"{'are' if many else 'is'} not in the tokenizer and become{'' if many else 's'} "
            f"{UNK}, e.g. {examples}; {fix}")
