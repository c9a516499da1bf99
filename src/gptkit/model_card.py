"""The model card: what a model is, what it learnt from, how long, and how well it scores.

Every save of `best/` writes `best/README.md` from the run's own files, and `gptkit export`
carries the same text (under the Hub's metadata header) to the Hugging Face folder, so a
shared model explains itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptkit.config import RunConfig
from gptkit.memory import parameter_count
from gptkit.runinfo import architecture_options

CARD_FILE = "README.md"

# eval-record keys and how the card names them
_RESULTS = (
    ("val_loss", "loss (nats/token)", "{:.4f}"),
    ("val_perplexity", "perplexity", "{:.2f}"),
    ("val_bits_per_byte", "bits per byte", "{:.4f}"),
    ("val_word_perplexity", "word-level perplexity", "{:.2f}"),
    ("val_token_accuracy", "response token accuracy", "{:.4f}"),
    ("train_loss", "train loss (same number of tokens)", "{:.4f}"),
)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def render(
    cfg: RunConfig,
    best: dict[str, Any],
    data: dict[str, Any] | None = None,
    environment: dict[str, Any] | None = None,
) -> str:
    """The card's markdown from a run's config, `best/config.json`, `data.json` and
    `environment.json` contents (the last two may be missing, e.g. in an imported run)."""
    m, d, t = cfg.model, cfg.data, cfg.train
    vocab = m.vocab_size or (data or {}).get("vocab_size") or 0
    n_params = parameter_count(cfg, vocab)
    imported = best.get("imported_from")
    if imported:
        origin = f"imported from Hugging Face `{imported}` (weights unchanged by gptkit)"
    elif cfg.distill.teacher:
        origin = f"distilled from the run `{cfg.distill.teacher}` with gptkit"
    elif t.init_from:
        origin = f"fine-tuned from the run `{t.init_from}` with gptkit"
    else:
        origin = "trained from scratch with gptkit"
    options = architecture_options(m)
    positions = m.block_size * m.n_embd if m.pos_embedding == "learned" else 0
    lines = [
        f"# {cfg.name}", "",
        f"A GPT-2-architecture language model, {origin}." if not options else
        f"A GPT-2-style language model ({', '.join(options)}), {origin}.", "",
        "## Model", "",
        *_table([
            ("layers / heads / width", f"{m.n_layer} / {m.n_head} / {m.n_embd}"),
            ("context", f"{m.block_size} tokens"),
            ("vocabulary", f"{vocab:,} tokens"),
            ("parameters", f"{n_params:,} ({n_params - positions:,} without "
                           "position embeddings)"),
            ("dropout / bias", f"{m.dropout} / {str(m.bias).lower()}"),
        ]),
        "",
        "## Data", "",
    ]
    tokenizer = f"{d.tokenizer}" + (f" (trained BPE, {d.vocab_size:,} tokens)"
                                     if d.tokenizer == "bpe" else "")
    rows = [("source", f"`{(data or {}).get('source', d.source)}`"), ("tokenizer", tokenizer)]
    for name, split in ((data or {}).get("splits") or {}).items():
        # a classifier's splits count examples, not tokens
        counts = [f"{split[k]:,} {k}" for k in ("tokens", "examples", "words", "bytes")
                  if k in split]
        rows.append((f"split `{name}`", ", ".join(counts)))
    lines += [*_table(rows), ""]
    if not imported:
        env = environment or {}
        world = int(env.get("world_size", 1))
        per_step = t.batch_tokens or t.micro_batch_size * m.block_size * world
        schedule = (f"{t.optimizer}, lr {t.lr:g} → {t.floor_lr:g} ({t.schedule}, "
                    f"{t.warmup_steps} warm-up steps), weight decay {t.weight_decay:g}, "
                    f"gradient clip {t.grad_clip:g}")
        rows = [
            ("steps", f"{best.get('step', 0):,} (of train.max_steps = {t.steps:,})"),
            ("tokens seen", f"{best.get('tokens_seen', 0):,} ({per_step:,} per step)"),
            ("optimizer", schedule),
        ]
        if env:
            rows.append(("hardware", f"{world} × {env.get('device_name') or env.get('device')}"
                                     f", {env.get('precision')}"))
        if best.get("elapsed_s") is not None:
            rows.append(("training time", f"{best['elapsed_s']:.0f} s to this checkpoint"))
        if env.get("gptkit"):
            rows.append(("software", f"gptkit {env['gptkit']}, PyTorch {env.get('torch')}"))
        lines += ["## Training", "", *_table(rows), ""]
        metrics = {"val_loss": best.get("val_loss"), **best.get("metrics", {})}
        results = [(label, fmt.format(metrics[key])) for key, label, fmt in _RESULTS
                   if isinstance(metrics.get(key), (int, float))]
        if results:
            capped = t.eval_tokens is not None and d.format != "sft"
            scope = (f"up to {t.eval_tokens:,} tokens of" if capped else "the whole")
            lines += [
                "## Results", "",
                f"Measured during training at step {best.get('step', 0):,} on {scope} split "
                f"`{d.eval_split}`, the split that chose this checkpoint, so it flatters the "
                f"model (`gptkit eval RUN` scores the whole split `{d.test_split or d.eval_split}`"
                f"{'' if d.test_split else '; a data.test_split would be unbiased'}).", "",
                *_table(results), "",
            ]
    lines += [
        "## Use", "",
        "```bash",
        "gptkit sample RUN --prompt \"...\"        # RUN: the run directory",
        "gptkit export RUN --format hf --out hf-model   # a Hugging Face folder",
        "```", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(\"hf-model\")",
        "tokenizer = AutoTokenizer.from_pretrained(\"hf-model\")",
        "```", "",
        "## Limitations", "",
        "A small model that imitates its training text: what it writes is often fluent and "
        "often false or meaningless. It has had no safety or instruction tuning.", "",
    ]
    return "\n".join(lines)


def run_card(run_dir: str | Path) -> str:
    """The card of a run: `best/README.md` when written, else rendered from its files."""
    from gptkit.rundir import RunDir

    run = RunDir(run_dir)
    saved = run.best / CARD_FILE
    if saved.is_file():
        return saved.read_text(encoding="utf-8")
    return render(run.config(), run.best_info() or {}, run.data(), run.environment())


def hub_card(run_dir: str | Path, pipeline_tag: str = "text-generation") -> str:
    """The run's card under the metadata header the Hugging Face Hub reads (`pipeline_tag`:
    the Hub's task, e.g. text-classification for a classifier)."""
    header = ["---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}",
              "tags:", "- gpt2", "- gptkit", "---", ""]
    return "\n".join(header) + run_card(run_dir)
