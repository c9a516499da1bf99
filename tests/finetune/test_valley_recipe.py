"""The CPU chat recipe (docs/finetuning.md, "A model you can chat with, on a CPU"): its data
keeps the held-out facts and phrasings out of training, and both stages run end to end at a
tiny size into a run that stores its chat template and answers a conversation."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptkit.chat_template import encode_chat, read_chat_template
from gptkit.finetune.examples import (
    HELD_OUT_ASKS,
    KINDS,
    creatures,
    held_out_traits,
    valley,
    valley_chat,
    valley_unseen_facts,
    valley_unseen_questions,
    write_examples,
)
from gptkit.finetune.records import Record, split_records
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate_tokens
from gptkit.run import load_run
from tests.test_cli import run_cli

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "data.vocab_size=300",
        "train.max_steps=2", "train.eval_interval=2", "train.warmup_steps=1",
        "train.checkpoint_interval=2", "train.micro_batch_size=2", "log.plots=false",
        "log.tensorboard=false", "log.sample_tokens=0"]


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def _asked(row: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs of a chat."""
    messages = row["messages"]
    return [(q["content"], a["content"]) for q, a in zip(messages, messages[1:], strict=False)
            if q["role"] == "user" and a["role"] == "assistant"]


HELD_OUT_QUESTIONS = {p.format(n=c.name) for asks in HELD_OUT_ASKS.values() for p in asks
                      for c in creatures(0)}


def _trait_answers(seed: int, which: str) -> set[str]:
    """The answer sentences of each creature's held-out trait ("held") or its others."""
    hidden = held_out_traits(seed)
    sentences = {"colour": "The {n} is {v}.", "home": "The {n} lives in the {v}.",
                 "food": "The {n} eats {v}.", "legs": "The {n} has {v} legs."}
    return {sentences[k].format(n=c.name, v=getattr(c, k)) for c in creatures(seed)
            for k in KINDS if (k == hidden[c.name]) == (which == "held")}


def test_training_dialogues_never_ask_the_held_out_traits_or_phrasings():
    chats = valley_chat(0)
    records = [Record(row, f"valley-chat.jsonl:{i + 1}") for i, row in enumerate(chats)]
    train = [r.fields for r in split_records(records, "train", 0.1)]
    held = _trait_answers(0, "held")
    for row in train:
        for question, answer in _asked(row):
            assert answer not in held, answer
            assert question not in HELD_OUT_QUESTIONS, question
    assert len(train) == 900


def test_held_out_chats_ask_what_they_claim():
    held, known = _trait_answers(0, "held"), _trait_answers(0, "known")
    prose = " ".join(doc["text"] for doc in valley(0))
    for row in valley_unseen_facts(0):
        answer = _asked(row)[-1][1]
        assert answer in held and answer.removesuffix(".").split()[-1] in prose
    for row in valley_unseen_questions(0):
        question, answer = _asked(row)[-1]
        assert answer in known and question in HELD_OUT_QUESTIONS
    # the validation split of valley-chat.jsonl is held-out dialogues of both kinds
    val = [_asked(row)[-1][1] for row in valley_chat(0)[900:]]
    assert len(val) == 100 and sum(a in held for a in val) == 50


def test_every_fact_is_in_the_pre_training_prose_before_its_held_out_part():
    docs = valley(0)
    train = " ".join(doc["text"] for doc in docs[: len(docs) - round(len(docs) * 0.1)])
    for creature in creatures(0):
        assert f"the {creature.name} " in train.lower() or f"The {creature.name} " in train
        assert creature.colour in train and creature.home in train


@pytest.mark.slow
def test_both_stages_run_and_the_result_answers_a_chat(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_examples("examples")
    code, _, err = run_cli(capsys, "train", "--recipe", "valley", "--out", "runs/valley",
                           "--no-progress", *_sets([*TINY, "train.eval_tokens=256"]))
    assert code == 0, err
    code, _, err = run_cli(capsys, "finetune", "runs/valley", "--data",
                           "examples/valley-chat.jsonl", "--recipe", "valley-chat",
                           "--out", "runs/valley-chat", "--no-progress",
                           *_sets([s for s in TINY if not s.startswith(("model.", "data."))]))
    assert code == 0, err
    template = read_chat_template(Path("runs/valley-chat"))
    assert template is not None
    run = load_run("runs/valley-chat")
    assert run.tokenizer.kind == "bpe" and run.tokenizer.vocab_size <= 300
    ids = encode_chat([{"role": "user", "content": "What colour is the rigogo?"}], run.tokenizer,
                      template, add_generation_prompt=True)
    assert run.tokenizer.decode(ids).endswith("<|assistant|>\n")
    settings = GenerationConfig(max_new_tokens=5, temperature=0.0)
    reply = [int(t) for t in generate_tokens(run.model, ids, settings,
                                             eot_id=run.tokenizer.eot_id)]
    assert 1 <= len(reply) <= 5 and all(0 <= t < run.tokenizer.vocab_size for t in reply)
