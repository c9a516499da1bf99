from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.finetune import sft
from gptkit.finetune.records import Record, read_records
from gptkit.finetune.template import generation_prompt, segments
from gptkit.model import GPT, IGNORE
from gptkit.tokenizers import Tokenizer
from gptkit.train.trainer import Trainer
from tests.finetune.tasks import (
    held_out_exact_match,
    reverse_task,
    run_sft,
    sft_config,
    write_jsonl,
)

CHAT = {"messages": [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ciao"},
]}


def _tokenizer(records: list[Record]) -> Tokenizer:
    return Tokenizer.train_char(sft.training_texts(records))


def test_prompt_tokens_get_no_loss():
    record = Record({"prompt": "Q: 2+2?\nA: ", "response": "4"}, "x:1")
    tok = _tokenizer([record])
    [example] = sft.encode_records([record], tok, block_size=64)
    x, y = sft.targets(example)
    n_prompt = len(tok.encode("Q: 2+2?\nA: "))
    assert (y[: n_prompt - 1] == IGNORE).all()  # predicting prompt tokens: no loss
    assert y[n_prompt - 1 :].tolist() == tok.encode("4") + [tok.eot_id]  # answer, then stop
    assert x.tolist() == example.ids[:-1].tolist()


def test_chat_template_learns_assistant_turns_only():
    record = Record(CHAT, "x:1")
    tok = _tokenizer([record])
    [example] = sft.encode_records([record], tok, block_size=256)
    learnt = tok.decode(example.ids[example.learnt].tolist())
    assert learnt == "hello<|endoftext|>ciao<|endoftext|>"
    text = tok.decode(example.ids.tolist())
    assert text == ("<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nhello<|endoftext|>"
                    "<|user|>\nbye\n<|assistant|>\nciao<|endoftext|>")
    prompt, answer = generation_prompt(record)
    assert answer == "ciao" and text.startswith(prompt) and prompt.endswith("<|assistant|>\n")


def test_packed_rows_give_each_example_the_logits_it_has_alone():
    records = [Record({"prompt": p, "response": r}, f"x:{i}")
               for i, (p, r) in enumerate([("ab", "cde"), ("abcd", "e"), ("b", "aa"), ("c", "d")])]
    tok = _tokenizer(records)
    examples = sft.encode_records(records, tok, block_size=16)
    pairs = [sft.targets(e) for e in examples]
    rows = sft.pack(pairs, block_size=12)
    assert all(sum(len(x) for x, _ in row) <= 12 for row in rows) and len(rows) < len(pairs)
    x, y, extra = sft.collate(rows, tok.eot_id, packed=True)
    torch.manual_seed(0)
    model = GPT.from_config(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16),
                            tok.vocab_size).eval()
    packed_logits, _ = model(x, **extra)
    start = 0
    for x_alone, _ in rows[0]:
        alone, _ = model(torch.from_numpy(x_alone)[None])
        torch.testing.assert_close(packed_logits[0, start : start + len(x_alone)], alone[0])
        start += len(x_alone)
    flat_y = np.concatenate([y_ for row in rows for _, y_ in row])
    assert sorted(y[y != IGNORE].tolist()) == sorted(flat_y[flat_y != IGNORE].tolist())


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    source = reverse_task(tmp_path / "rev.jsonl", n=50)
    records = read_records(source)
    tok = _tokenizer(records)
    examples = sft.encode_records(records, tok, 32)

    def loader(packing: bool) -> sft.SFTBatches:
        return sft.SFTBatches(examples, records, tok, block_size=32, micro_batch_size=4,
                              accum_steps=2, seed=3, packing=packing)

    for packing in (False, True):
        a, b = loader(packing), loader(packing)
        for step in (0, 7, 40):  # 40 steps of 8 examples: several epochs
            for (xa, ya, *_), (xb, yb, *_) in zip(a.step_batches(step), b.step_batches(step),
                                                  strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first = loader(False)
    seen = [int(i) for step in range(6) for x, _ in first.step_batches(step) for i in
            range(len(x))]
    assert len(seen) == 48  # epochs run on: 50 examples, 6 steps of 8


def test_accumulation_keeps_the_mean_over_all_response_tokens(tmp_path):
    """Micro-batches hold different numbers of targets: 1 x 8 and 2 x 4 take the same step."""
    source = reverse_task(tmp_path / "rev.jsonl", n=60)
    params = []
    for micro, tokens in ((8, None), (4, 8 * 32)):
        # fp32: exact arithmetic, bf16 rounding would differ per split
        cfg = sft_config(source, 1).updated(train={
            "micro_batch_size": micro, "batch_tokens": tokens, "precision": "fp32"})
        trainer = Trainer(cfg, tmp_path / f"run{micro}", progress=False)
        loss, _ = trainer._train_step()
        params.append((float(loss), [p.detach().clone() for p in trainer.model.parameters()]))
    assert params[0][0] == pytest.approx(params[1][0], rel=1e-5)
    for a, b in zip(params[0][1], params[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("packing", [False, True])
def test_sft_learns_to_reverse(tmp_path, packing):
    source = reverse_task(tmp_path / "rev.jsonl")
    result = run_sft(source, tmp_path / "run", steps=300, data={"packing": packing})
    assert result.last_eval["val_token_accuracy"] > 0.75
    assert held_out_exact_match(tmp_path / "run", source) >= 0.5


def test_finetune_cli_starts_from_a_run_and_resumes(tmp_path, capsys):
    from tests.test_cli import run_cli

    source = reverse_task(tmp_path / "rev.jsonl", n=60)
    run_sft(source, tmp_path / "base", steps=5)
    code, out, err = run_cli(capsys, "finetune", str(tmp_path / "base"), "--data", str(source),
                             "--out", str(tmp_path / "ft"), "--no-progress",
                             "--set", "train.max_steps=4", "--set", "train.eval_interval=2",
                             "--set", "train.checkpoint_interval=2")
    assert code == 0, err
    from gptkit.config import read_config

    cfg = read_config(tmp_path / "ft" / "config.yaml")
    assert cfg.train.init_from == str(tmp_path / "base") and cfg.data.format == "sft"
    assert cfg.model.n_embd == 64  # the base run's shape, not the recipe's
    code, out, err = run_cli(capsys, "train", "--resume", "--out", str(tmp_path / "ft"),
                             "--no-progress", "--set", "train.max_steps=6")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "ft"), "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["split"] == "val" and scores["examples"] == 6
    assert scores["response_tokens"] > 0 and 0 <= scores["token_accuracy"] <= 1
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))


@pytest.mark.parametrize(("record", "match"), [
    ({"prompt": "a"}, "no field 'response'"),
    ({"text": "a"}, "needs fields prompt and response, or messages"),
    ({"prompt": "a", "response": ""}, "field 'response' is empty"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "role must be one of"),
    ({"prompt": "a" * 40, "response": "b"}, "prompt fills all 32 positions"),
])
def test_bad_records_are_named_by_line(tmp_path, record, match):
    good = {"prompt": "a", "response": "b"}
    source = write_jsonl(tmp_path / "d.jsonl", [good, record, good, good])
    with pytest.raises(GptkitError, match=match) as info:
        Trainer(sft_config(source, 1), tmp_path / "run", progress=False)
    assert "d.jsonl:2" in str(info.value)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    with pytest.raises(GptkitError, match=r"d.jsonl:2 is not valid JSON"):
        read_records(path)


def test_segments_of_prompt_response():
    assert segments(Record({"prompt": "p", "response": "r"}, "x:1")) == [
        ("p", False), ("r<|endoftext|>", True)]


def test_record_characters_the_tokenizer_lacks_are_warned(tmp_path, capsys):
    """A char tokenizer learnt from the training records has no digit the held-out ones use."""
    records = [{"prompt": "reverse ab: ", "response": "ba"}] * 9
    source = write_jsonl(tmp_path / "d.jsonl", [*records, {"prompt": "add 7+7: ",
                                                           "response": "14"}])
    run_sft(source, tmp_path / "run", steps=1, data={"tokenizer": "char"})
    err = capsys.readouterr().err
    assert (f"gptkit: warning: 5 characters in {source} [val] are not in the tokenizer and "
            "become <unk>, e.g. '7', ") in err  # 'd' is in the template's text
    assert all(repr(c) in err for c in "7+14")
    assert f"{source} [train]" not in err
