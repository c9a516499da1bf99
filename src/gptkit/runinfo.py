"""`gptkit info`: what a run (or a recipe) is, before or after training.

Size per component, FLOPs per token, memory for training and inference, data statistics
and the best metrics; everything computed from the config on the meta device, so a
1.5B-parameter recipe is described without allocating it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptkit.config import ModelConfig, RunConfig
from gptkit.device import memory_precision
from gptkit.errors import GptkitError
from gptkit.memory import human_bytes, inference_memory, memory_plan, training_memory
from gptkit.model import GPT
from gptkit.rundir import RunDir
from gptkit.tokenizers import Tokenizer
from gptkit.train.distributed import resolve_strategy

# parameter-name pattern -> component; the first match wins
_COMPONENTS = (
    ("transformer.wte.", "token embedding (tied output layer)"),
    ("transformer.wpe.", "position embedding"),
    (".attn.", "attention"),
    (".mlp.", "MLP"),
    ("ln_", "LayerNorms"),
    ("lm_head.", "output layer"),
)
# the architecture options beyond GPT-2, as `gptkit info` names them when they are used
_OPTIONS = (
    ("pos_embedding", "rope", "rotary positions"), ("norm", "rmsnorm", "RMSNorm"),
    ("qk_norm", True, "QK-norm"), ("mlp", "relu2", "ReLU² MLP"), ("mlp", "swiglu", "SwiGLU MLP"),
    ("tie_embeddings", False, "untied output layer"),
)


def architecture_options(model: ModelConfig) -> list[str]:
    """The options beyond GPT-2 a model uses, by name (empty: GPT-2 exactly), with the
    rotary scaling of a context extension (model.rope_base, model.rope_scale) where it is
    not the default, since it changes what every position means."""
    names = [name for key, value, name in _OPTIONS if getattr(model, key) == value]
    scaling = [f"{label} {value:g}" for label, value, default in (
        ("base", model.rope_base, 10_000.0), ("scale", model.rope_scale, 1.0))
        if model.pos_embedding == "rope" and value != default]
    if scaling:
        names[names.index("rotary positions")] += f" ({', '.join(scaling)})"
    if model.context_extension is not None:
        names.append(f"context extended ({model.context_extension})")
    return names


def parameter_breakdown(model: GPT) -> dict[str, int]:
    """Parameter counts per component (the tied LM head counted once, as the embedding)."""
    rename = {}
    if not model.config.tie_embeddings:
        rename["token embedding (tied output layer)"] = "token embedding"
    if model.config.norm == "rmsnorm":
        rename["LayerNorms"] = "RMSNorms"
    counts = {rename.get(name, name): 0 for _, name in _COMPONENTS}
    for param_name, param in model.named_parameters():  # yields the tied weight once
        component = next((c for key, c in _COMPONENTS if key in param_name), "other")
        component = rename.get(component, component)
        counts[component] = counts.get(component, 0) + param.numel()
    return counts


def describe(cfg: RunConfig, vocab_size: int, precision: str = "fp32",
             world_size: int | None = None) -> dict[str, Any]:
    """Size, parameters, FLOPs and memory of the model a config describes (no weights).

    With `world_size`, the memory plan too: per-process training memory of every parallel
    strategy over that many processes, with and without activation checkpointing.
    """
    with torch.device("meta"):
        model = GPT.from_config(cfg.model, vocab_size)
    info: dict[str, Any] = {
        "name": cfg.name,
        "model": {
            "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head,
            "n_embd": cfg.model.n_embd, "block_size": cfg.model.block_size,
            "vocab_size": model.config.vocab_size, "dropout": cfg.model.dropout,
            "bias": cfg.model.bias,
            "options": architecture_options(cfg.model),
        },
        "parameters": model.num_params(),
        "parameters_non_embedding": model.num_params(non_embedding=True),
        "parameters_by_component": parameter_breakdown(model),
        "flops_per_token_training": model.flops_per_token(training=True),
        "flops_per_token_inference": model.flops_per_token(training=False),
        "memory": {
            "precision": precision,
            "micro_batch_size": cfg.train.micro_batch_size,
            "training": training_memory(cfg, vocab_size, precision).to_dict(),
            "inference_fp32_batch_1": inference_memory(cfg, vocab_size).to_dict(),
        },
    }
    if world_size is not None:
        rows = memory_plan(cfg, vocab_size, precision, world_size)
        chosen = chosen_plan_row(cfg, model.num_params(), world_size)
        for row in rows:
            row["chosen"] = (row["strategy"], row["activation_checkpointing"]) == chosen
        info["memory"]["plan"] = {"world_size": world_size, "rows": rows}
    return info


def chosen_plan_row(cfg: RunConfig, num_params: int, world_size: int) -> tuple[str, bool] | None:
    """The memory-plan row (strategy, activation checkpointing) the config trains with on
    `world_size` processes; None when it cannot (dist.strategy=none on several)."""
    try:
        strategy = resolve_strategy(cfg.dist.strategy, world_size, num_params,
                                    cfg.dist.fsdp_min_params)
    except GptkitError:
        return None
    if strategy == "fsdp" and cfg.dist.cpu_offload:
        strategy = "fsdp+offload"
    return strategy, cfg.train.activation_checkpointing


def run_info(run_dir: str | Path, precision: str | None = None,
             world_size: int | None = None) -> dict[str, Any]:
    """`describe` for a run directory, plus its data statistics and best metrics.

    `precision` defaults to the one the run trained with.
    """
    run = RunDir(run_dir).check()
    cfg = run.config()
    tokenizer = Tokenizer.load(run.tokenizer_file)
    environment = run.environment() or {}
    info = describe(cfg, tokenizer.vocab_size,
                    memory_precision(precision or environment.get("precision")), world_size)
    info["run"] = str(run_dir)
    for key, value in (("data", run.data()), ("best", run.best_info()),
                       ("epochs", run.epochs()), ("environment", environment or None)):
        if value is not None:
            info[key] = value
    return info


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form `gptkit info` prints."""
    m = info["model"]
    lines = [
        f"{info.get('run', info['name'])}",
        f"  model        {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, "
        f"context {m['block_size']}, vocabulary {m['vocab_size']:,}",
        f"  parameters   {info['parameters']:,} ({info['parameters_non_embedding']:,} "
        "non-embedding)",
    ]
    if m.get("options"):
        lines.insert(2, f"  options      {', '.join(m['options'])}")
    for component, count in info["parameters_by_component"].items():
        if count:
            share = 100 * count / max(info["parameters"], 1)
            lines.append(f"    {component:<36} {count:>14,}  {share:5.1f}%")
    lines.append(f"  FLOPs/token  {info['flops_per_token_training']:,} training, "
                 f"{info['flops_per_token_inference']:,} inference")
    mem = info["memory"]
    train, infer = mem["training"], mem["inference_fp32_batch_1"]
    lines += [
        f"  memory       training, per process ({mem['precision']}, micro-batch "
        f"{mem['micro_batch_size']}): {human_bytes(train['total'])}",
        f"                 weights {human_bytes(train['weights'])}, gradients "
        f"{human_bytes(train['gradients'])}, optimizer {human_bytes(train['optimizer'])}, "
        f"activations {human_bytes(train['activations'])}",
        f"               inference (fp32, batch 1, full KV cache): {human_bytes(infer['total'])}",
        f"               serving: {human_bytes(infer['kv_cache'])} of KV cache per row of full "
        "context (fp32; gptkit serve --max-batch-size N allocates N rows)",
    ]
    if "plan" in mem:
        lines += format_plan(mem["plan"], mem["precision"], mem["micro_batch_size"],
                             m["block_size"])
    data = info.get("data")
    if data:
        lines.append(f"  data         {data['source']} ({data['tokenizer_kind']} tokenizer, "
                     f"{data['vocab_size']:,} tokens)")
        for name, split in data["splits"].items():
            counts = [f"{split['tokens']:>11,} tokens"] + [
                f"{split[k]:>11,} {k}" for k in ("examples", "words", "bytes") if k in split]
            lines.append(f"    {name:>6}: " + " ".join(counts))
    for line in (info.get("epochs") or {}).get("lines", []):
        lines.append(f"  epochs       {line}")
    best = info.get("best")
    if best and best.get("val_loss") is None:
        lines.append(f"  imported     from {best.get('imported_from')}")
    elif best:
        metrics = best.get("metrics", {})
        extra = "".join(
            f", {label} {metrics[key]:.4g}" for key, label in (
                ("val_perplexity", "perplexity"), ("val_bits_per_byte", "bits/byte"),
                ("val_word_perplexity", "word perplexity"))
            if key in metrics)
        lines.append(f"  best         val loss {best['val_loss']:.4f}{extra} at step "
                     f"{best['step']:,} ({best['tokens_seen']:,} tokens seen)")
    if best and best.get("quantization"):
        lines.append(f"  compressed   {best['quantization']} weights (from "
                     f"{best.get('quantized_from')})")
    if best and best.get("pruned"):
        pruned = best["pruned"]
        lines.append(f"  compressed   pruned ({pruned['method']}, amount {pruned['amount']}): "
                     f"{100 * pruned['sparsity_blocks']:.1f}% of the blocks' weights zero "
                     f"(from {pruned['from']})")
    env = info.get("environment")
    if env:
        lines.append(f"  trained on   {env.get('world_size', 1)} × {env.get('device_name')} "
                     f"({env.get('device')}, {env.get('precision')}), torch {env.get('torch')}")
    return "\n".join(lines)


def format_plan(plan: dict[str, Any], precision: str, micro_batch_size: int,
                block_size: int) -> list[str]:
    """The memory plan as a table: one row per strategy and activation checkpointing."""
    header = ("strategy", "procs", "act. ckpt", "weights", "gradients", "optimizer",
              "activations", "buffers", "per GPU", "host (CPU)")
    lines = [f"  memory plan  per process, {precision}, micro-batch {micro_batch_size}, context "
             f"{block_size}, {plan['world_size']} processes (buffers: DDP's gradient buckets, "
             "FSDP's unsharded parameters and gradients; <-: what dist.strategy and "
             "train.activation_checkpointing choose)"]
    rows = [header] + [
        (row["strategy"], str(row["world_size"]), "yes" if row["activation_checkpointing"] else
         "no", *(human_bytes(row[key]) for key in ("weights", "gradients", "optimizer",
                                                   "activations", "buffers", "total")),
         human_bytes(row["host"]) if row["host"] else "-")
        for row in plan["rows"]
    ]
    marks = [""] + ["  <-" if row.get("chosen") else "" for row in plan["rows"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row, mark in zip(rows, marks, strict=True):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("    " + "  ".join(cells) + mark)
    return lines
