"""`gptkit chat` and `gptkit.chat.ChatSession`: the conversation the model reads (history,
system prompt, /reset, /system, turns dropped to fit), the reply (streamed as it is kept, cut
at the template's end-of-turn marker, reproducible under a seed), the commands and the
options a chat refuses. Tiny random models: what they say is noise, what they read is exact.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gptkit.chat as chat_module
from gptkit.chat import ChatSession
from gptkit.chat_template import (
    ChatTemplate,
    default_chat_template,
    encode_chat,
    write_chat_template,
)
from gptkit.config import ModelConfig, RunConfig, save_config
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.model import GPT
from gptkit.tokenizers import Tokenizer
from gptkit.train import checkpoint
from tests.test_cli import expect_error, run_cli

# every printable ASCII character and newline: the char tokenizer spells any message here
ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def write_run(path: Path, template: ChatTemplate | None = None, block_size: int = 128) -> Path:
    """A run folder holding a tiny random model with a character tokenizer (and `template`)."""
    tokenizer = Tokenizer.train_char([ALPHABET])
    cfg = RunConfig(name=path.name, model=ModelConfig(
        n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=tokenizer.vocab_size))
    torch.manual_seed(0)
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    tokenizer.save(path / "tokenizer.json")
    checkpoint.save_best(path, GPT(cfg.model), {"step": 0, "val_loss": 1.0, "tokens_seen": 0})
    if template is not None:
        write_chat_template(path, template)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run as chat fine-tuning leaves it: gptkit's own chat template stored with it."""
    return write_run(tmp_path_factory.mktemp("chat") / "run", default_chat_template())


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The prompt ids of every reply generated meanwhile."""
    seen: list[list[int]] = []
    real = chat_module.generate_tokens

    def spy(model: Any, prompt: Any, settings: Any, **kw: Any) -> Iterator[torch.Tensor]:
        seen.append(list(prompt))
        return real(model, prompt, settings, **kw)

    monkeypatch.setattr(chat_module, "generate_tokens", spy)
    return seen


def chat(capsys, monkeypatch, run: Path, stdin: str, *flags: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return run_cli(capsys, "chat", str(run), *flags)


def session(run: Path, system: str | None = None, **settings: Any) -> ChatSession:
    from gptkit.chat_template import require_chat_template
    from gptkit.run import load_run

    loaded = load_run(run)
    config = GenerationConfig(**{"max_new_tokens": 12, "temperature": 0.0, **settings})
    return ChatSession(loaded.model, loaded.tokenizer, require_chat_template(run), config,
                       system=system)


def test_history_and_system_prompt_are_carried_into_the_next_turn(run, prompts):
    tokenizer = Tokenizer.load(run / "tokenizer.json")
    s = session(run, system="Be brief.")
    first = s.reply("Hello there")
    second = s.reply("And then?")
    conversation = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello there"},
                    {"role": "assistant", "content": first.text},
                    {"role": "user", "content": "And then?"}]
    assert prompts[0] == encode_chat(conversation[:2], tokenizer, default_chat_template(),
                                     add_generation_prompt=True)
    assert prompts[1] == encode_chat(conversation, tokenizer, default_chat_template(),
                                     add_generation_prompt=True)
    assert s.messages() == [*conversation, {"role": "assistant", "content": second.text}]


def test_streamed_text_is_the_reply_kept(run):
    s = session(run, temperature=1.0, seed=5, max_new_tokens=30, stop=["e"])
    for message in ("Hi", "Tell me more"):
        pieces: list[str] = []
        reply = s.reply(message, stream=pieces.append)
        assert "".join(pieces) == reply.text == s.history[-1]["content"]
        assert "e" not in reply.text


def scripted(monkeypatch: pytest.MonkeyPatch, tokenizer: Tokenizer, text: str) -> None:
    """The model 'generates' `text`, one character token a step."""
    def fake(model: Any, prompt: Any, settings: Any, **kw: Any) -> Iterator[torch.Tensor]:
        for t in tokenizer.encode(text):
            yield torch.tensor([t])

    monkeypatch.setattr(chat_module, "generate_tokens", fake)


def test_a_chatml_reply_stops_at_its_end_marker_which_is_never_shown(tmp_path, monkeypatch):
    run = write_run(tmp_path / "chatml", ChatTemplate(CHATML))
    s = session(run)
    assert s.settings.stop == ["<|im_end|>"]  # found from the template
    scripted(monkeypatch, Tokenizer.load(run / "tokenizer.json"), "Hi <|im_x|> ok<|im_end|>\nmore")
    pieces: list[str] = []
    reply = s.reply("Hello", stream=pieces.append)
    assert reply.text == "".join(pieces) == "Hi <|im_x|> ok"
    assert all("<|im_end" not in piece for piece in pieces)
    # text that may be the start of the marker is held back until it is known not to be
    shown = ["".join(pieces[: i + 1]) for i in range(len(pieces))]
    assert not [s for s in shown for k in range(1, 10) if s.endswith("<|im_end|>"[:k])]
    assert s.history[-1] == {"role": "assistant", "content": "Hi <|im_x|> ok"}


def test_ctrl_c_stops_the_reply_not_the_session(run):
    s = session(run, temperature=1.0, seed=1, max_new_tokens=30)
    pieces: list[str] = []

    def show(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            raise KeyboardInterrupt

    reply = s.reply("Hi", stream=show)
    assert reply.interrupted and reply.text == "".join(pieces)
    assert s.history[-1]["content"] == reply.text
    assert not s.reply("Again").interrupted and len(s.history) == 4


def test_oldest_turns_are_dropped_to_fit_and_said(run, prompts, capsys, monkeypatch):
    messages = [f"message number {i}" for i in range(5)]
    code, out, err = chat(capsys, monkeypatch, run, "\n".join(messages) + "\n",
                          "--max-new-tokens", "8", "--temperature", "0", "--system", "Hi")
    assert code == 0, err
    assert len(prompts) == 5 and all(len(p) <= 128 - 8 for p in prompts)
    notes = re.findall(r"\(dropped the (oldest turn|\d+ oldest turns) to fit the 128-token "
                       r"context\)", err)
    assert notes  # five turns of ~45 tokens cannot fit in 120
    tokenizer = Tokenizer.load(run / "tokenizer.json")
    text = tokenizer.decode(prompts[-1])
    assert text.startswith("<|system|>\nHi\n") and text.endswith(
        "<|user|>\nmessage number 4\n<|assistant|>\n")


def test_a_message_that_cannot_fit_alone_is_not_answered(run, prompts, capsys, monkeypatch):
    code, out, err = chat(capsys, monkeypatch, run, "x" * 130 + "\nshort\n",
                          "--max-new-tokens", "8", "--temperature", "0")
    assert code == 0, err
    assert "gptkit: this message takes" in err and "shorten it" in err
    assert len(prompts) == 1  # only "short" was answered
    assert Tokenizer.load(run / "tokenizer.json").decode(prompts[0]).endswith(
        "<|user|>\nshort\n<|assistant|>\n")


def test_reset_system_and_exit_commands(run, prompts, capsys, monkeypatch):
    tokenizer = Tokenizer.load(run / "tokenizer.json")
    stdin = "one\n/system Be kind.\ntwo\n/reset\nthree\n/system\n/exit\nnever\n"
    code, out, err = chat(capsys, monkeypatch, run, stdin, "--max-new-tokens", "4",
                          "--temperature", "0", "--system", "Be brief.")
    assert code == 0, err
    assert len(prompts) == 3  # nothing after /exit
    texts = [tokenizer.decode(p) for p in prompts]
    assert texts[0] == "<|system|>\nBe brief.\n<|user|>\none\n<|assistant|>\n"
    # /system changes the system prompt and keeps the history
    assert texts[1].startswith("<|system|>\nBe kind.\n<|user|>\none\n<|assistant|>\n")
    assert texts[1].endswith("<|user|>\ntwo\n<|assistant|>\n")
    # /reset forgets the history and keeps the system prompt
    assert texts[2] == "<|system|>\nBe kind.\n<|user|>\nthree\n<|assistant|>\n"
    assert out.rstrip().endswith("Be kind.")  # /system alone shows it


def test_settings_help_and_unknown_commands(run, capsys, monkeypatch):
    code, out, err = chat(capsys, monkeypatch, run, "/settings\n/help\n/nope\n",
                          "--top-k", "5", "--stop", "END", "--max-new-tokens", "10")
    assert code == 0, err
    settings = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line
                    and not line.startswith(" "))
    assert settings["top_k"] == "5"  # the flag
    assert settings["temperature"] == "0.8"  # the run's sample section
    assert json.loads(settings["stop"]) == ["END"]  # gptkit's format ends at end-of-text
    assert settings["context"] == "128 tokens"
    assert settings["max_new_tokens"] == "10"
    assert "/reset" in out and "/system TEXT" in out
    assert "(unknown command /nope: /help lists the commands)" in err


def test_seed_makes_the_conversation_reproducible(run, capsys, monkeypatch):
    flags = ("--temperature", "1", "--max-new-tokens", "20", "--seed")
    outs = [chat(capsys, monkeypatch, run, "hi\nho\n", *flags, seed)[1]
            for seed in ("3", "3", "4")]
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_a_run_without_chat_template_is_one_line_error(tmp_path, capsys, monkeypatch):
    plain = write_run(tmp_path / "plain")
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    expect_error(capsys, "chat", str(plain), match="has no chat template")


@pytest.mark.parametrize("flags,match", [
    (["--prompt", "hi"], "--prompt"),
    (["--prompts-file", "x.txt"], "--prompts-file"),
    (["--stream"], "always streams"),
    (["--num-samples", "2"], "one reply per message"),
    (["--num-beams", "2"], "beam search"),
    (["--length-penalty", "2"], "beam search"),
    (["--early-stopping", "true"], "beam search"),
    (["--max-new-tokens", "128"], "max_new_tokens must be between 1 and 127"),
    (["--top-p", "2"], "--top-p"),
])
def test_options_a_chat_cannot_use_are_errors(run, capsys, monkeypatch, flags, match):
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    expect_error(capsys, "chat", str(run), *flags, match=match)


def test_a_run_whose_sample_settings_use_beams_says_which_setting(tmp_path, capsys,
                                                                  monkeypatch):
    beams = write_run(tmp_path / "beams", default_chat_template())
    config = (beams / "config.yaml").read_text()
    (beams / "config.yaml").write_text(config.replace("num_beams: 1", "num_beams: 3"))
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    expect_error(capsys, "chat", str(beams), match="sample.num_beams is 3")


def test_session_refuses_settings_it_cannot_stream(run):
    with pytest.raises(GptkitError, match="num_beams"):
        session(run, num_beams=2)


def test_chat_with_an_imported_hugging_face_chat_model(tmp_path, prompts, capsys, monkeypatch):
    """A random transformers GPT-2 whose tokenizer carries a ChatML template: imported, it
    chats, reading exactly the ids of transformers' apply_chat_template."""
    pytest.importorskip("transformers")
    from tests.interop.test_chat_template import hf_ids
    from tests.interop.test_hf import CORPUS, hf_folder

    tokenizer = Tokenizer.train_bpe([CORPUS], 300)
    folder = tmp_path / "hf-chat"
    hf_folder(folder, tokenizer, n_positions=256)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
              "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    code, _, err = run_cli(capsys, "import", str(folder), "--out", str(tmp_path / "run"))
    assert code == 0, err
    code, out, err = chat(capsys, monkeypatch, tmp_path / "run", "Hello\nWho are you?\n/settings\n",
                          "--system", "Be brief.", "--max-new-tokens", "6", "--seed", "0")
    assert code == 0, err
    assert '"<|im_end|>"' in out  # the template's end of turn is a stop string
    assert "<|im_end|>" not in out.split("max_new_tokens")[0]  # no reply shows it
    assert len(prompts) == 2
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert prompts[0] == hf_ids(folder, messages, True)
    reply = tokenizer.decode(prompts[1]).split("<|im_start|>assistant\n")[1]
    reply = reply.split("<|im_end|>")[0]
    messages += [{"role": "assistant", "content": reply},
                 {"role": "user", "content": "Who are you?"}]
    assert prompts[1] == hf_ids(folder, messages, True)


def test_each_reply_of_a_seeded_chat_draws_its_own_randomness(run, monkeypatch):
    """--seed S: reply n samples with seed S + n, so a conversation repeats as a whole
    without every reply drawing the same random numbers."""
    seeds: list[int | None] = []
    real = chat_module.generate_tokens

    def spy(model: Any, prompt: Any, settings: Any, **kw: Any) -> Iterator[torch.Tensor]:
        seeds.append(settings.seed)
        return real(model, prompt, settings, **kw)

    monkeypatch.setattr(chat_module, "generate_tokens", spy)
    s = session(run, temperature=1.0, seed=7)
    s.reply("one")
    s.reset()
    s.reply("two")
    assert seeds == [7, 8]
    session(run, temperature=1.0, seed=None).reply("three")
    assert seeds[-1] is None  # unseeded: fresh randomness


def test_characters_the_tokenizer_lacks_are_warned_about(run, capsys, monkeypatch):
    code, _, err = chat(capsys, monkeypatch, run, "café\n", "--max-new-tokens", "2",
                        "--system", "naïve")
    assert code == 0, err
    assert "1 character in the system prompt is not in the tokenizer" in err
    assert "1 character in the message is not in the tokenizer and becomes <unk>, e.g. 'é'" \
        in err
