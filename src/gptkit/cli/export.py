"""`gptkit export`, `prune` and `import`: write a run in another form, or import a GPT-2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gptkit.cli import options
from gptkit.config.choices import ExportFormat, GgufType, PruneMethod, Quantization, names
from gptkit.errors import GptkitError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "export", help="write a run as a Hugging Face model folder, or as an int8 run",
        description="Write a run's model and tokenizer as a folder that transformers loads "
        "(AutoModelForCausalLM / AutoTokenizer.from_pretrained(OUT)); a finetune-classify run "
        "as GPT2ForSequenceClassification or GPT2ForTokenClassification with its labels, for "
        "pipeline(\"text-classification\" | \"token-classification\"). With --quantize int8, "
        "write a gptkit run folder instead (config.yaml, tokenizer.json, best/ with int8 "
        "weights and their scales in safetensors, marked \"quantization\": \"int8\" in "
        "best/config.json) that gptkit sample/eval/info OUT load as an int8 model on the CPU; "
        "Hugging Face GPT-2 has no int8 layers to hold it.",
    )
    options.add_run(p)
    p.add_argument("--format", choices=names(ExportFormat),
                   help="hf: Hugging Face GPT-2 (config.json, model.safetensors, tokenizer; "
                   "the default); gptkit: a run folder (the default with --quantize); onnx: "
                   "model.onnx, a decoder with past keys and values for ONNX Runtime, beside "
                   "the Hugging Face config and tokenizer; gguf: one GGUF file for llama.cpp, "
                   "--out naming the file")
    p.add_argument("--outtype", choices=names(GgufType),
                   help="GGUF weight type (--format gguf; default f32): q8_0 is llama.cpp's "
                   "8-bit blocks, norms and biases stay f32")
    p.add_argument("--quantize", choices=names(Quantization),
                   help="int8: dynamic int8 linear layers for CPU inference (--format gptkit)")
    p.add_argument("--adapter-only", action="store_true",
                   help="a LoRA run: write its adapter alone, in peft's layout "
                   "(AutoPeftModelForCausalLM.from_pretrained(OUT)), with the base model it "
                   "belongs to in OUT/base unless --base names it")
    p.add_argument("--base", metavar="PATH_OR_HUB_ID",
                   help="with --adapter-only: the Hugging Face GPT-2 the run was fine-tuned "
                   "from (checked to hold the run's base weights), named in the adapter's "
                   "config instead of a copy in OUT/base")
    p.add_argument("--out", required=True, metavar="DIR", help="folder (file for gguf) to write")
    options.add_checkpoint(p, "export")
    options.add_overwrite(p, "an existing export")
    p.set_defaults(handler=export)

    p = commands.add_parser(
        "prune", help="zero a share of a run's weights; write the result as a new run",
        description="Prune a run's model with torch.nn.utils.prune and write it, pruning made "
        "permanent, as a new run (config, tokenizer, best/ with a model-card note of the "
        "achieved sparsity) that eval, sample, export and prune accept. Methods: magnitude = "
        "the smallest weights of every linear layer of the blocks (the same share in each); "
        "heads = whole attention heads; mlp = whole MLP hidden channels (both chosen over "
        "all layers by the L2 norm of their weights). Zeros make no dense kernel faster; "
        "measure what they cost with gptkit eval OUT.",
    )
    options.add_run(p)
    p.add_argument("--method", required=True, choices=names(PruneMethod),
                   help="what to remove")
    p.add_argument("--amount", required=True, type=float,
                   help="share to remove, between 0 and 1: of the weights (magnitude), heads "
                   "or MLP channels (rounded to whole ones)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new run directory")
    options.add_checkpoint(p, "prune")
    options.add_overwrite(p, "an existing run directory")
    p.set_defaults(handler=prune)

    p = commands.add_parser(
        "import", help="make a run from a Hugging Face GPT-2",
        description="Turn a Hugging Face GPT-2 (a local folder, or a hub id such as gpt2 or "
        "distilgpt2, downloaded unless offline) into a run directory that eval, sample, info "
        "and train --init-from accept.",
    )
    p.add_argument("source", metavar="SOURCE", help="folder with config.json, weights and "
                   "tokenizer files, or a hub id")
    p.add_argument("--out", metavar="RUN", help="run directory (default: runs/<source name>)")
    options.add_overwrite(p, "an existing run directory")
    p.set_defaults(handler=import_hf)


def export(args: argparse.Namespace) -> None:
    from gptkit.rundir import RunDir

    if args.base and not args.adapter_only:
        raise GptkitError("--base names the base model of a LoRA adapter; add --adapter-only")
    if args.adapter_only:
        if args.quantize or args.format not in (None, "hf"):
            raise GptkitError("--adapter-only writes a peft adapter (fp32, Hugging Face "
                              f"layout); drop --quantize / --format {args.format}")
        from gptkit.interop.peft_adapter import export_adapter

        out = export_adapter(args.run, args.out, which=args.checkpoint, base=args.base,
                             overwrite=args.overwrite)
        print(f"exported the LoRA adapter of {args.run} to {out}; load it with "
              f"peft.AutoPeftModelForCausalLM.from_pretrained({str(out)!r})")
        return
    if args.format == "onnx":
        from gptkit.interop.onnx import export_onnx

        if args.quantize:
            raise GptkitError("--format onnx writes the fp32 model; drop --quantize (int8 is "
                              "a gptkit run: --format gptkit --quantize int8)")
        out = export_onnx(args.run, args.out, which=args.checkpoint, overwrite=args.overwrite)
        print(f"exported {args.run} to {out}; run it with "
              f"onnxruntime.InferenceSession({str(out / 'model.onnx')!r})")
        return
    if args.outtype and args.format != "gguf":
        raise GptkitError("--outtype sets GGUF weight types; add --format gguf, or drop it")
    if args.format == "gguf":
        from gptkit.interop.gguf import export_gguf

        if args.quantize:
            raise GptkitError("--quantize int8 writes a gptkit run; for an 8-bit GGUF use "
                              "--format gguf --outtype q8_0")
        out = export_gguf(args.run, args.out, outtype=args.outtype or "f32",
                          which=args.checkpoint, overwrite=args.overwrite)
        print(f"exported {args.run} to {out}; run it with llama.cpp: llama-cli -m {out}   |   "
              f"llama_cpp.Llama({str(out)!r})")
        return
    if args.quantize or args.format == "gptkit":
        from gptkit.ops import export_int8

        if args.format == "hf":
            raise GptkitError("a Hugging Face GPT-2 folder cannot hold int8 layers; drop "
                              "--format hf to write an int8 gptkit run (--format gptkit)")
        if not args.quantize:
            raise GptkitError("--format gptkit writes an int8 run; add --quantize int8 (a "
                              "plain copy of the run needs no export)")
        out = export_int8(args.run, args.out, which=args.checkpoint, overwrite=args.overwrite)
        print(f"exported {args.run} with int8 weights to {out}; next: gptkit eval {out}   |   "
              f"gptkit sample {out}")
        return
    if RunDir(args.run).quantization:
        raise GptkitError(f"{args.run} holds int8 weights, which Hugging Face GPT-2 cannot "
                          "hold; export the fp32 run it was quantized from")
    from gptkit.interop import hf_classify
    from gptkit.interop.hf import export_hf

    out = export_hf(args.run, args.out, which=args.checkpoint, overwrite=args.overwrite)
    task = hf_classify.task_of(json.loads((out / "config.json").read_text(encoding="utf-8")))
    loader = (f"AutoModelForCausalLM.from_pretrained({str(out)!r})" if task is None else
              f"pipeline({hf_classify.PIPELINE_TAG[task]!r}, model={str(out)!r})")
    print(f"exported {args.run} to {out}; load it with transformers.{loader}")


def prune(args: argparse.Namespace) -> None:
    from gptkit.ops import prune_run

    out, report = prune_run(args.run, args.out, method=args.method, amount=args.amount,
                            which=args.checkpoint, overwrite=args.overwrite)
    units = {"heads": f"; {report['heads']['zero']} of {report['heads']['of']} attention heads",
             "mlp": (f"; {report['mlp_channels']['zero']} of {report['mlp_channels']['of']} MLP "
                     "channels")}.get(args.method, "")
    print(f"pruned {args.run} ({args.method}, {args.amount:g}) into {out}: "
          f"{100 * report['blocks']:.1f}% of the blocks' linear weights are zero "
          f"({100 * report['model']:.1f}% of all parameters){units}")
    print(f"next: gptkit eval {out}   |   gptkit sample {out}")


def import_hf(args: argparse.Namespace) -> None:
    from gptkit.interop.hf import import_hf

    out = Path(args.out) if args.out else Path("runs") / Path(args.source).resolve().name
    from gptkit.rundir import RunDir

    import_hf(args.source, out, overwrite=args.overwrite)
    print(f"imported {args.source} into {out}")
    if RunDir(out).is_classifier:
        print(f"next: gptkit classify {out} --text ...")
        return
    print(f"next: gptkit sample {out}   |   gptkit train --init-from {out} ...")
