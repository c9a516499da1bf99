"""Write docs/memory.md, the memory planning tables, from `gptkit.memory`:
`python docs/make_memory_table.py` (a second; `--check` fails when the file is out of date).

GPT-2 small to XL (the `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl` presets of the
`gpt2-124m` recipe) at context 1024, micro-batch 8, bf16 mixed precision, AdamW; one process
and eight. The same figures as `gptkit info --recipe gpt2-124m --set model.preset=... --set
train.micro_batch_size=8 --precision bf16 --world-size 8`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptkit.config import load_config
from gptkit.memory import human_bytes, parameter_count, training_memory

PRESETS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
MICRO_BATCH, CONTEXT, PRECISION, VOCAB = 8, 1024, "bf16", 50257
# (label, strategy, processes, CPU offload)
SETUPS = (
    ("none, 1 GPU", "none", 1, False),
    ("DDP, 8 GPUs", "ddp", 8, False),
    ("FSDP, 1 GPU", "fsdp", 1, False),
    ("FSDP, 8 GPUs", "fsdp", 8, False),
    ("FSDP + offload, 1 GPU", "fsdp", 1, True),
    ("FSDP + offload, 8 GPUs", "fsdp", 8, True),
)
OUT = Path(__file__).resolve().parent / "memory.md"

INTRO = """# Memory planning

How much memory one training process needs, before you rent the GPUs: `gptkit info` prints it
for any recipe or run, per parallel strategy, with and without activation checkpointing:

```bash
gptkit info --recipe gpt2-124m --set model.preset=gpt2-xl --precision bf16 --world-size 8
```

The tables below are that estimate for GPT-2 small to XL at context {context}, micro-batch
{micro} sequences per process, {precision} mixed precision and AdamW. They are written by
`python docs/make_memory_table.py` from `gptkit/memory.py`; do not edit them by hand.

What each column counts, per process (see the docstring of `gptkit/memory.py`):
- **weights, gradients, optimizer**: fp32 master weights, their gradients, AdamW's two
  moments. A full copy in every process under none and DDP; divided by the number of
  processes under FSDP; in host memory (CPU) with FSDP's CPU offload.
- **activations**: what autograd keeps for the backward pass (measured on this
  implementation, see `tests/test_memory.py`), with the fp32 log-probabilities over the
  50,257-token vocabulary ({logits} at this micro-batch) and, under autocast, bf16 copies of
  the weights. Activation checkpointing keeps each block's input and recomputes one block at
  a time.
- **buffers**: DDP's gradient buckets (a second copy of the gradients); FSDP's parameters
  and gradients unsharded at one time (the embeddings for the whole step, two blocks'
  parameters, one block's gradients).
- **per GPU**: the sum of the above on the accelerator; the CUDA context, the allocator's
  caching and fragmentation, and temporaries of the backward pass come on top. Not yet
  checked against a GPU run (the activation constants were measured on the CPU).

FSDP's figures assume `fully_shard` per block and at the root with a bf16 parameter /
fp32 reduction policy, as `dist.strategy=fsdp` sets it up; the one-GPU FSDP rows show what
mixed precision and offload alone change. The sharded terms (weights, optimizer state) are
checked against the shards each process of a 2-process FSDP run writes
(`tests/train/test_sharded.py`); the unsharded buffers are modelled.
"""


def rows() -> list[tuple[str, int, str, bool, dict[str, int]]]:
    """(preset, parameters, setup label, activation checkpointing, memory) for every cell."""
    out = []
    for preset in PRESETS:
        cfg = load_config("gpt2-124m", [f"model.preset={preset}", f"model.block_size={CONTEXT}",
                                        f"train.micro_batch_size={MICRO_BATCH}",
                                        "train.optimizer=adamw"])
        n = parameter_count(cfg, VOCAB)
        for label, strategy, processes, offload in SETUPS:
            for checkpointing in (False, True):
                memory = training_memory(cfg, VOCAB, PRECISION, strategy=strategy,
                                         world_size=processes, offload=offload,
                                         activation_checkpointing=checkpointing)
                out.append((preset, n, label, checkpointing, memory.to_dict()))
    return out


def gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def render() -> str:
    table = rows()
    logits = 4 * MICRO_BATCH * CONTEXT * VOCAB
    lines = [INTRO.format(context=CONTEXT, micro=MICRO_BATCH, precision=PRECISION,
                          logits=human_bytes(logits)), "## Per GPU, in GiB", "",
             "Without / with activation checkpointing.", ""]
    labels = [label for label, *_ in SETUPS]
    lines.append("| model | parameters | " + " | ".join(labels) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in labels) + " |")
    for preset in PRESETS:
        mine = [row for row in table if row[0] == preset]
        cells = []
        for label in labels:
            off, on = (row[4]["total"] for row in mine if row[2] == label)
            cells.append(f"{gib(off)} / {gib(on)}")
        lines.append(f"| {preset} | {mine[0][1] / 1e6:,.0f}M | " + " | ".join(cells) + " |")
    lines += ["", "## Every term", "",
              "| model | setup | act. ckpt | weights | gradients | optimizer | activations | "
              "buffers | per GPU | host (CPU) |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for preset, _, label, checkpointing, m in table:
        terms = " | ".join(human_bytes(m[key]) for key in (
            "weights", "gradients", "optimizer", "activations", "buffers", "total"))
        host = human_bytes(m["host"]) if m["host"] else "-"
        lines.append(f"| {preset} | {label} | {'yes' if checkpointing else 'no'} | {terms} | "
                     f"{host} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when docs/memory.md differs from what would be written")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            sys.exit(f"{OUT} is out of date; run python docs/make_memory_table.py")
        return
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
