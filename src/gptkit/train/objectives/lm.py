"""Language modelling objectives: next-token prediction on a corpus (pre-training, continued
pre-training) and on the responses of prompt/response records (supervised fine-tuning).

Both train a plain GPT with its own loss, keep the weights of the lowest held-out loss, write a
sample of text at each evaluation and a model card beside the best weights.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from torch import nn

from gptkit.chat_template import ChatTemplate, default_chat_template, read_chat_template
from gptkit.config import DataConfig, RunConfig
from gptkit.data.loader import RandomWindows
from gptkit.data.prepare import PreparedData, prepare
from gptkit.data.sources import is_wikitext, resolve_protocol
from gptkit.device import autocast
from gptkit.errors import GptkitError
from gptkit.evaluate import evaluate_split, score_tokens
from gptkit.finetune import lora, sft
from gptkit.finetune.template import is_chat
from gptkit.generation.text import sample_text
from gptkit.model import GPT
from gptkit.model_card import CARD_FILE
from gptkit.model_card import render as render_card
from gptkit.rundir import TOKENIZER_CONFIG_FILE
from gptkit.tokenizers import Tokenizer, build_tokenizer, unknown_warning
from gptkit.train import distributed
from gptkit.train.distributed import DistEnv
from gptkit.train.objectives.base import BatchSource, Objective, Setup, same_tokenizer_everywhere


class LanguageModelling(Objective):
    """Text: random windows of the training split; held-out loss over fixed windows."""

    def __init__(self) -> None:
        self.data: PreparedData | None = None
        self.tokenizer: Tokenizer | None = None

    def data_config(self, cfg: RunConfig, setup: Setup) -> DataConfig:
        # data.protocol auto becomes published or offline here, and is saved so with the run
        data, message = resolve_protocol(cfg.data, setup.data_dir)
        if message:
            setup.say(message)
        return data

    def prepare(self, cfg: RunConfig, tokenizer: Tokenizer | None, setup: Setup) -> Tokenizer:
        """Rank 0 tokenises (and trains the tokenizer); the others then read its cache."""
        data = None
        if setup.env.is_main:
            data = prepare(cfg.data, data_dir=setup.data_dir, tokenizer=tokenizer,
                           progress=setup.progress)
        distributed.barrier(setup.env)
        if data is None:
            data = prepare(cfg.data, data_dir=setup.data_dir, tokenizer=tokenizer)
        for split in (cfg.data.train_split, cfg.data.eval_split):
            n = data.split_meta(split)["tokens"]
            if n < cfg.model.block_size + 1:
                raise GptkitError(
                    f"split {split!r} has {n} tokens, fewer than model.block_size + 1 = "
                    f"{cfg.model.block_size + 1}; use more text or a smaller model.block_size"
                )
        self.data, self.tokenizer = data, data.tokenizer
        return data.tokenizer

    def batches(self, cfg: RunConfig, env: DistEnv, accum_steps: int) -> BatchSource:
        assert self.data is not None
        return RandomWindows(
            self.data.tokens(cfg.data.train_split), block_size=cfg.model.block_size,
            micro_batch_size=cfg.train.micro_batch_size, accum_steps=accum_steps,
            seed=cfg.train.seed, rank=env.rank, world_size=env.world_size,
            warmup_steps=cfg.train.seq_warmup_steps, warmup_start=cfg.train.seq_warmup_start,
        )

    def evaluate(self, model: nn.Module, cfg: RunConfig, precision: str,
                 env: DistEnv) -> dict[str, Any]:
        """Validation loss on a fixed set of windows (the same every time) and train loss."""
        data, tokenizer = self.data, self.tokenizer
        assert data is not None and tokenizer is not None
        block = cfg.model.block_size
        cap = None if cfg.train.eval_tokens is None else math.ceil(cfg.train.eval_tokens / block)
        special = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
        common: dict[str, Any] = dict(
            block_size=block, batch_size=max(cfg.eval.batch_size, cfg.train.micro_batch_size),
            device=env.device, precision=precision, special_ids=special, env=env,
        )
        # what `gptkit eval --split <eval split>` computes, on `cap` windows when capped
        result = evaluate_split(model, data, cfg.data.eval_split, max_windows=cap,
                                word_level=is_wikitext(cfg.data.source), **common)
        val_tokens = len(data.tokens(cfg.data.eval_split))
        val_windows = math.ceil((min(val_tokens, (cap or 10**18) * block) - 1) / block)
        train = score_tokens(
            model, data.tokens(cfg.data.train_split), max_windows=val_windows, **common
        )
        record = {
            "train_loss": train.nll / max(train.tokens, 1),
            "val_loss": result.loss,
            "val_perplexity": result.perplexity,
            "val_tokens": result.tokens,
        }
        if result.bits_per_byte is not None:
            record["val_bits_per_byte"] = result.bits_per_byte
        if result.word_perplexity is not None:
            record["val_word_perplexity"] = result.word_perplexity
        return record

    def describe(self, record: dict[str, Any]) -> str:
        return (f"train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f} "
                f"(ppl {record['val_perplexity']:.2f})")

    def data_meta(self) -> dict[str, Any]:
        assert self.data is not None
        return self.data.meta

    def sample(self, model: nn.Module, cfg: RunConfig, tokenizer: Tokenizer,
               precision: str, env: DistEnv) -> str:
        """The same seed every time, so the texts show what the model learnt in between."""
        gpt = model.get_base_model() if lora.is_lora(model) else model  # type: ignore[operator]
        assert isinstance(gpt, GPT)
        settings = cfg.sample.replace(max_new_tokens=cfg.log.sample_tokens, num_samples=1,
                                      num_beams=1)
        with autocast(env.device, precision):
            return sample_text(gpt, tokenizer, cfg.sample.prompt, settings)[0]

    def best_files(self, cfg: RunConfig, record: dict[str, Any], info: dict[str, Any],
                   environment: dict[str, Any]) -> dict[str, str]:
        return {CARD_FILE: render_card(cfg, info, self.data_meta(), environment)}


class SupervisedFineTuning(LanguageModelling):
    """Prompt/response or chat records (data.format=sft): the loss on responses only;
    held-out response loss and next-token accuracy (`gptkit.finetune.sft`)."""

    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[str, Any] = {}
        self.template: ChatTemplate | None = None  # set when the records are chats

    @staticmethod
    def chat_template(cfg: RunConfig, setup: Setup) -> ChatTemplate:
        """The chat format to train on: the run's own on resume, else that of the run it
        starts from (an imported chat model keeps its format), else gptkit's."""
        source = setup.run_dir if setup.resume else cfg.train.init_from
        found = read_chat_template(Path(str(source))) if source else None
        return found or default_chat_template()

    def prepare(self, cfg: RunConfig, tokenizer: Tokenizer | None, setup: Setup) -> Tokenizer:
        """Records of data.source, split and encoded (small: in memory); chats through the
        chat template, which the run keeps (`run_files`)."""
        self.records = sft.load_split(cfg.data, "train")
        val_records = sft.load_split(cfg.data, cfg.data.eval_split)
        if any(is_chat(r) for r in self.records + val_records):
            self.template = self.chat_template(cfg, setup)
        template = self.template
        if tokenizer is None:
            tokenizer = same_tokenizer_everywhere(build_tokenizer(
                cfg.data, sft.training_texts(self.records, template),
                data_dir=setup.data_dir), setup.env)
        block, side = cfg.model.block_size, cfg.finetune.truncation_side
        lengths: dict[str, list[int]] = {"train": [], "val": []}
        self.train = sft.encode_records(self.records, tokenizer, block, template, side,
                                        lengths["train"])
        self.val = sft.encode_records(val_records, tokenizer, block, template, side,
                                      lengths["val"])
        cuts = {"train": sft.cut_counts(self.train, lengths["train"]),
                "val": sft.cut_counts(self.val, lengths["val"])}
        setup.say(sft.data_summary(
            {"train": len(self.train), "val": len(self.val)}, cuts, block + 1, side))
        for split, records in (("train", self.records), (cfg.data.eval_split, val_records)):
            warning = unknown_warning(
                tokenizer.unknown_characters(sft.training_texts(records, template)),
                f"{cfg.data.source} [{split}]")
            if warning and setup.env.is_main:
                print(f"gptkit: {warning}", file=sys.stderr)
        self.meta = {
            "format": "sft", "source": cfg.data.source, "tokenizer_kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
            "splits": {
                name: {"examples": len(examples),
                       "tokens": int(sum(len(e.ids) for e in examples)),
                       "response_tokens": int(sum(e.learnt[1:].sum() for e in examples)),
                       **cuts[name]}
                for name, examples in (("train", self.train), ("val", self.val))
            },
            "truncation_side": side,
        }
        self.tokenizer = tokenizer
        return tokenizer

    def batches(self, cfg: RunConfig, env: DistEnv, accum_steps: int) -> BatchSource:
        assert self.tokenizer is not None
        return sft.SFTBatches(
            self.train, self.records, self.tokenizer, block_size=cfg.model.block_size,
            micro_batch_size=cfg.train.micro_batch_size, accum_steps=accum_steps,
            seed=cfg.train.seed, rank=env.rank, world_size=env.world_size,
            packing=cfg.data.packing, augment=cfg.data.augment, template=self.template,
            truncation_side=cfg.finetune.truncation_side,
        )

    def evaluate(self, model: nn.Module, cfg: RunConfig, precision: str,
                 env: DistEnv) -> dict[str, Any]:
        """Loss and next-token accuracy on the responses of the held-out examples; train loss
        on as many training examples (not augmented)."""
        assert self.tokenizer is not None
        common: dict[str, Any] = dict(
            batch_size=max(cfg.eval.batch_size, cfg.train.micro_batch_size),
            pad_id=int(self.tokenizer.eot_id or 0), device=env.device, precision=precision,
        )
        val = sft.response_metrics(sft.response_loss(model, self.val, **common))
        train = sft.response_metrics(
            sft.response_loss(model, self.train[: len(self.val)], **common))
        return {
            "train_loss": train["loss"], "val_loss": val["loss"],
            "val_perplexity": val["perplexity"], "val_tokens": val["response_tokens"],
            "val_token_accuracy": val["token_accuracy"],
        }

    def data_meta(self) -> dict[str, Any]:
        return self.meta

    def run_files(self) -> dict[str, str]:
        """A chat run's template, where transformers and gptkit's chat tools look for it."""
        if self.template is None:
            return {}
        return {TOKENIZER_CONFIG_FILE: json.dumps({"chat_template": self.template.source},
                                                  indent=2, ensure_ascii=False) + "\n"}
