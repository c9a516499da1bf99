"""The chat format travels with the model: a chat fine-tuning run keeps its template, export
writes it as `chat_template`, import keeps an imported model's, and transformers'
`apply_chat_template` gives exactly gptkit's ids (what SFT trains on, and what the model
reads before it answers).

Tiny models and tokenizers only, everything under tmp_path, no network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gptkit.chat_template import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplate,
    default_chat_template,
    encode_chat,
    read_chat_template,
    require_chat_template,
    write_chat_template,
)
from gptkit.cli import main
from gptkit.errors import GptkitError
from gptkit.finetune import sft
from gptkit.finetune.records import read_records
from gptkit.finetune.template import segments
from gptkit.tokenizers import Tokenizer
from tests.finetune.tasks import run_sft, write_jsonl
from tests.interop.test_hf import CORPUS, hf_folder, make_run
from tests.test_cli import run_cli

transformers = pytest.importorskip("transformers")

# a system message, multi-turn history, and contents whose edges meet the template's text
# (leading and trailing whitespace, blank lines, non-ASCII)
HISTORY = [
    {"role": "system", "content": "You are terse.  "},
    {"role": "user", "content": "  hello there\n\n"},
    {"role": "assistant", "content": " Hi! 😀 café"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "\n4\n"},
    {"role": "user", "content": "and 3+3?"},
]
FINISHED = [*HISTORY, {"role": "assistant", "content": "6"}]

# a ChatML-like template of the kind hub models carry: block tags on their own lines (HF's
# trim_blocks/lstrip_blocks matter), the eos_token variable, a loop variable
CHATML = """{% for message in messages %}
    {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}
    {% if loop.index > 0 %}{{ eos_token }}{% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ '    <|im_start|>assistant\\n' }}{% endif %}"""


def hf_ids(folder: Path, messages: list[dict[str, str]], add_generation_prompt: bool,
           ) -> list[int]:
    """`apply_chat_template(..., tokenize=True)` of the tokenizer transformers loads."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids: Any = tokenizer.apply_chat_template(messages, tokenize=True,
                                             add_generation_prompt=add_generation_prompt)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def chat_data(path: Path, n: int = 24) -> Path:
    """Chats whose first answer starts with spaces after the header's newline, in text where
    a byte-level BPE learns to merge newline and space: encoding the rendered text whole
    (as transformers does) then differs from encoding its parts one by one."""
    records = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        records.append({"messages": [
            {"role": "system", "content": "You add numbers,\n one\n by\n one."},
            {"role": "user", "content": f"{a}+{b}?"},
            {"role": "assistant", "content": f"  {a + b}"},
            {"role": "user", "content": f"and {b}+{a}?"},
            {"role": "assistant", "content": f"{a + b} again"},
        ]})
    return write_jsonl(path, records)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data file, a chat fine-tuning run with a trained byte-level BPE, its export)."""
    root = tmp_path_factory.mktemp("chat")
    source = chat_data(root / "chat.jsonl")
    run_sft(source, root / "run", steps=2, model={"block_size": 128},
            data={"tokenizer": "bpe", "vocab_size": 300})
    main(["export", str(root / "run"), "--format", "hf", "--out", str(root / "hf")])
    return source, root / "run", root / "hf"


def test_chat_finetuning_stores_its_template_and_export_carries_it(chat_run):
    _, run, export = chat_run
    stored = json.loads((run / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert stored == {"chat_template": DEFAULT_CHAT_TEMPLATE}
    config = json.loads((export / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert config["eos_token"] == "<|endoftext|>"  # the rest of the config is unchanged
    # the template renders gptkit's documented format
    assert default_chat_template().render(FINISHED[:3], add_generation_prompt=False) == (
        "<|system|>\nYou are terse.  \n<|user|>\n  hello there\n\n\n<|assistant|>\n"
        " Hi! 😀 café<|endoftext|>")


def test_copies_of_a_chat_run_keep_its_template(chat_run, tmp_path):
    from gptkit.ops import export_int8

    _, run, _ = chat_run
    export_int8(run, tmp_path / "int8")
    assert require_chat_template(tmp_path / "int8").source == DEFAULT_CHAT_TEMPLATE


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_apply_chat_template_gives_gptkits_ids(chat_run, add_generation_prompt):
    _, run, export = chat_run
    messages = HISTORY if add_generation_prompt else FINISHED
    tokenizer = Tokenizer.load(run / "tokenizer.json")
    ours = encode_chat(messages, tokenizer, require_chat_template(run),
                       add_generation_prompt=add_generation_prompt)
    assert hf_ids(export, messages, add_generation_prompt) == ours
    text = tokenizer.decode(ours)
    assert text.endswith("<|assistant|>\n" if add_generation_prompt else "6<|endoftext|>")


def test_sft_trains_on_the_ids_transformers_renders(chat_run):
    """What chat fine-tuning learns from each record is apply_chat_template's ids of it,
    with the loss on the assistant's turns (content and end of turn) only."""
    source, run, export = chat_run
    tokenizer = Tokenizer.load(run / "tokenizer.json")
    records = read_records(source)
    examples = sft.encode_records(records, tokenizer, 128, require_chat_template(run))
    for record, example in zip(records, examples, strict=True):
        messages = record.fields["messages"]
        assert example.ids.tolist() == hf_ids(export, messages, False)
        assert example.ids.tolist() != sft.encode(  # the parts one by one: other ids
            segments(record, require_chat_template(run)), tokenizer).ids.tolist()
        # learnt: the answers and their ends of turn, and the header's newline where one
        # token joins it to the answer's first space
        learnt = tokenizer.decode(example.ids[example.learnt].tolist())
        answers = [m["content"] + "<|endoftext|>" for m in messages if m["role"] == "assistant"]
        assert re.fullmatch("".join("\n?" + re.escape(a) for a in answers), learnt)
        # the prompt of the last answer is, id for id, what the model reads to give it
        prompt = encode_chat(messages[:-1], tokenizer, require_chat_template(run),
                             add_generation_prompt=True)
        assert example.ids[: len(prompt)].tolist() == prompt


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_apply_chat_template_agrees_for_every_tokenizer_kind(kind, tmp_path):
    if kind == "char":
        tokenizer = Tokenizer.train_char([CORPUS + "".join(str(m) for m in FINISHED)])
    else:  # GPT-2's layout: vocab.json + merges.txt
        Tokenizer.train_bpe([CORPUS], 300).backend.model.save(str(tmp_path))
        tokenizer = Tokenizer.from_gpt2_files(tmp_path)
    run = make_run(tmp_path / "run", tokenizer)
    write_chat_template(run, default_chat_template())  # as chat fine-tuning leaves it
    main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    for messages, prompt in ((HISTORY, True), (FINISHED, False)):
        ours = encode_chat(messages, tokenizer, default_chat_template(),
                           add_generation_prompt=prompt)
        assert hf_ids(tmp_path / "hf", messages, prompt) == ours


@pytest.mark.parametrize("where", ["tokenizer_config", "jinja_file"])
def test_import_keeps_a_chat_template_and_renders_it_as_transformers(where, tmp_path, capsys):
    tokenizer = Tokenizer.train_bpe([CORPUS], 300)
    folder = tmp_path / "hf-chat"
    hf_folder(folder, tokenizer)
    if where == "tokenizer_config":
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                  "chat_template": CHATML}
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    else:  # newer transformers keep it in its own file
        (folder / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    code, _, err = run_cli(capsys, "import", str(folder), "--out", str(tmp_path / "run"))
    assert code == 0, err
    template = read_chat_template(tmp_path / "run")
    assert template is not None and template.source == CHATML
    code, _, err = run_cli(capsys, "export", str(tmp_path / "run"), "--format", "hf",
                           "--out", str(tmp_path / "again"))
    assert code == 0, err
    for messages, prompt in ((HISTORY, True), (FINISHED, False)):
        ours = encode_chat(messages, tokenizer, template, add_generation_prompt=prompt)
        assert hf_ids(tmp_path / "again", messages, prompt) == ours
    # lstrip_blocks strips the indent of block tags only, as transformers does
    assert tokenizer.decode(ours).startswith("    <|im_start|>system\nYou are terse.")


def test_finetuning_an_imported_chat_model_keeps_its_format(tmp_path, capsys):
    tokenizer = Tokenizer.train_bpe([CORPUS], 300)
    folder = tmp_path / "hf-chat"
    hf_folder(folder, tokenizer, n_positions=128)
    (folder / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    assert run_cli(capsys, "import", str(folder), "--out", str(tmp_path / "base"))[0] == 0
    source = chat_data(tmp_path / "chat.jsonl", n=12)
    code, _, err = run_cli(capsys, "finetune", str(tmp_path / "base"), "--data", str(source),
                           "--out", str(tmp_path / "ft"), "--no-progress",
                           "--set", "train.max_steps=1", "--set", "train.eval_interval=1")
    assert code == 0, err
    template = require_chat_template(tmp_path / "ft")
    assert template.source == CHATML
    [example] = sft.encode_records(read_records(source)[:1], tokenizer, 128, template)
    assert tokenizer.decode(example.ids.tolist()).startswith("    <|im_start|>system\n")


def test_a_run_without_a_template_says_so_in_one_line(tmp_path):
    run = make_run(tmp_path / "plain", Tokenizer.train_bpe([CORPUS], 300))
    assert read_chat_template(run) is None
    with pytest.raises(GptkitError, match="has no chat template") as info:
        require_chat_template(run)
    assert "\n" not in str(info.value) and str(run) in str(info.value)
    # export of such a run names no template, as before
    main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "chat_template" not in config
    write_chat_template(run, default_chat_template())
    assert require_chat_template(run).source == DEFAULT_CHAT_TEMPLATE


@pytest.mark.parametrize(("source", "match"), [
    ("{% for m in messages %}", "not valid Jinja"),
    ("{{ raise_exception('no system messages') }}", "refused the conversation: no system"),
])
def test_bad_templates_are_one_line_errors(source, match):
    with pytest.raises(GptkitError, match=match) as info:
        ChatTemplate(source, "x").render(FINISHED)
    assert "\n" not in str(info.value)


def test_a_template_that_does_not_grow_by_prefix_cannot_be_trained_on():
    # renders only the last message: the assistant's turns cannot be told apart
    last_only = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(GptkitError, match="growing prefix"):
        ChatTemplate(last_only, "x").segments(FINISHED)


TRUE_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
               "'<|im_end|>\\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.mark.parametrize(("source", "end"), [
    (DEFAULT_CHAT_TEMPLATE, None),  # the end-of-text token ends the turn
    (CHATML, None),  # eos_token after each message: the same
    (TRUE_CHATML, "<|im_end|>"),  # a text marker: generation must stop at it
    ("{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}", None),
])
def test_the_end_of_an_assistant_turn_is_found_from_the_template(source, end):
    assert ChatTemplate(source, "x").end_of_turn() == end
