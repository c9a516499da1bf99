"""Decode speed of the same weights in gptkit, llama.cpp (GGUF) and ONNX Runtime, one run.

    python -m benchmarks.decode_runtimes [--threads 2] [--new-tokens 32] [--rounds 3]
        [--shapes shakespeare-char 6x384-50k gpt2-small] [--batches 1 8]

For each shape a model with random weights is exported with gptkit's own exporters
(`gptkit.interop.gguf.write_gguf` as f32, the like-for-like of gptkit's fp32, f16 and q8_0;
`gptkit.interop.onnx.export_graph`, the decoder with past keys and values) and decoded
greedily from random 8-token prompts, feeding token ids directly (no tokenizer in the
timed loop), with no end-of-text stop:
- gptkit: `generate` with temperature 0 in fp32, and in its default precision when that is
  not fp32 (`inference_dtype("auto")`: bf16 only on CPUs with bf16 matrix instructions);
- llama.cpp through llama-cpp-python's C API (`llama_decode`, one sequence per row, so
  batch 8 is 8 sequences decoded together, as llama.cpp's server batches them), argmax in
  numpy over the logits it returns;
- ONNX Runtime: the graph run step by step, `present` fed back as `past`, argmax in numpy.
Every side gets the same number of threads (`--threads`: torch.set_num_threads, llama.cpp's
n_threads, ORT's intra-op threads). After one short warm-up per side the sides alternate
(A B C D, A B C D, ...); tokens/s is batch x new tokens over the median wall time of the
rounds (the 8-token prompt included). Where llama.cpp is faster than gptkit, one gptkit
decode step is profiled (torch.profiler, top ops by self CPU time).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import write_results
from gptkit.config import ModelConfig
from gptkit.config.choices import GgufType
from gptkit.device import inference_dtype
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate, generate_steps
from gptkit.model import GPT
from gptkit.tokenizers import Tokenizer

PROMPT_TOKENS = 8
# the default recipe's model (shakespeare-char: nanogpt-cpu preset, no biases, ~65 chars),
# the 6x384 model of generate_vs_transformers with GPT-2's vocabulary, and GPT-2 small
SHAPES: dict[str, dict[str, Any]] = {
    "shakespeare-char": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64,
                         "bias": False, "vocab_size": None},
    "6x384-50k": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 512,
                  "vocab_size": 50257},
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024,
                   "vocab_size": 50257},
}
Decoder = Callable[[np.ndarray, int], np.ndarray]


def char_tokenizer() -> Tokenizer:
    """The default recipe's tokenizer kind (characters); the GGUF file needs one, and ids
    past its vocabulary (the 50,257-row models) are written as unused tokens."""
    return Tokenizer.train_char(["First Citizen:\nBefore we proceed any further, hear me "
                                 "speak.\nAll:\nSpeak, speak. ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "bcdgjklmnoqtuvxyz!$&',-.3;?"])


def gptkit_decoder(model: GPT) -> Decoder:
    def decode(prompts: np.ndarray, new: int) -> np.ndarray:
        greedy = GenerationConfig(max_new_tokens=new, temperature=0.0, top_k=None)
        out = generate(model, torch.from_numpy(prompts), greedy, eot_id=None)
        return out[:, prompts.shape[1]:].numpy()
    return decode


class LlamaDecoder:
    """A GGUF file in llama.cpp, one sequence per batch row (llama-cpp-python's `Llama`
    keeps one sequence, so this uses its C API)."""

    def __init__(self, path: Path, rows: int, context: int, threads: int) -> None:
        import llama_cpp as lc

        self.lc = lc
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its load log
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        ctx = lc.llama_context_default_params()
        ctx.n_ctx = rows * context
        ctx.n_batch = ctx.n_ubatch = max(rows * context, 64)
        ctx.n_seq_max = rows
        ctx.n_threads = ctx.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, ctx)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(ctx.n_batch, 0, rows)

    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(tokens)
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, rows: int) -> np.ndarray:
        logits = np.ctypeslib.as_array(self.lc.llama_get_logits(self.ctx),
                                       shape=(rows * self.n_vocab,))
        return logits.reshape(rows, self.n_vocab).argmax(-1)

    def __call__(self, prompts: np.ndarray, new: int) -> np.ndarray:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        rows, width = prompts.shape
        self._decode([(int(prompts[r, j]), j, r, j == width - 1)
                      for r in range(rows) for j in range(width)])
        out = [self._argmax(rows)]
        for step in range(new - 1):
            self._decode([(int(t), width + step, r, True) for r, t in enumerate(out[-1])])
            out.append(self._argmax(rows))
        return np.stack(out, axis=1)

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


def ort_decoder(path: Path, threads: int) -> Decoder:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    pasts = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]

    def decode(prompts: np.ndarray, new: int) -> np.ndarray:
        rows, width = prompts.shape
        past = {i.name: np.zeros((rows, i.shape[1], 0, i.shape[3]), np.float32) for i in pasts}
        ids, out = prompts.astype(np.int64), []
        for step in range(new):
            start = 0 if step == 0 else width + step - 1
            length = start + ids.shape[1]
            logits, *present = sess.run(None, {
                "input_ids": ids, "attention_mask": np.ones((rows, length), np.int64),
                "position_ids": np.broadcast_to(np.arange(start, length), ids.shape).copy(),
                **past})
            token = logits[:, -1].argmax(-1)
            out.append(token)
            past = dict(zip(past, present, strict=True))
            ids = token[:, None].astype(np.int64)
        return np.stack(out, axis=1)
    return decode


def profile_step(model: GPT, prompts: np.ndarray, top: int = 10) -> dict[str, Any]:
    """One gptkit decode step after the prompt (KV cache warm), ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    greedy = GenerationConfig(max_new_tokens=4, temperature=0.0, top_k=None)
    steps = generate_steps(model, torch.from_numpy(prompts), greedy, eot_id=None)
    next(steps)
    next(steps)  # one step, unprofiled, so that the profiled one is a steady one
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        next(steps)
    steps.close()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"step_ms": total / 1000,
            "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000,
                         "share": e.self_cpu_time_total / total, "calls": e.count}
                        for e in ops]}


def bench_shape(shape: dict[str, Any], batches: list[int], new_tokens: int, rounds: int,
                threads: int, folder: Path) -> dict[str, Any]:
    """{"parameters", ..., "batch_B": {"tokens_per_s": {side: median}, "ratio_*": ...}}."""
    from gptkit.interop.gguf import write_gguf
    from gptkit.interop.onnx import export_graph

    tokenizer = char_tokenizer()
    config = ModelConfig(**{**shape, "vocab_size": shape["vocab_size"] or tokenizer.vocab_size,
                            "dropout": 0.0})
    assert config.vocab_size is not None
    torch.manual_seed(0)
    model = GPT(config).eval()
    dtype = inference_dtype("auto", torch.device("cpu"), model.num_params())
    sides_of_model: dict[str, Decoder] = {"gptkit_fp32": gptkit_decoder(model)}
    fast = None
    if dtype is not None:
        fast = GPT(config).eval()
        fast.load_state_dict(model.state_dict())
        sides_of_model["gptkit"] = gptkit_decoder(fast.to(dtype))
    files: dict[GgufType, Path] = {q: folder / f"model-{q}.gguf" for q in ("f32", "f16", "q8_0")}
    for q, path in files.items():
        write_gguf(model, tokenizer, path, outtype=q)
    onnx_model = GPT(config).eval()
    onnx_model.load_state_dict(model.state_dict())
    export_graph(onnx_model, folder / "model.onnx")
    new = min(new_tokens, config.block_size - PROMPT_TOKENS)
    results: dict[str, Any] = {"parameters": model.num_params(), "shape": {
        k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "block_size",
                                        "vocab_size")}, "new_tokens": new,
        "prompt_tokens": PROMPT_TOKENS, "gptkit_default_dtype": str(dtype or torch.float32)}
    reference = "gptkit" if "gptkit" in sides_of_model else "gptkit_fp32"
    ort_side = ort_decoder(folder / "model.onnx", threads)
    for batch in batches:
        llamas = {f"llama.cpp_{q}": LlamaDecoder(path, batch, config.block_size, threads)
                  for q, path in files.items()}
        sides: dict[str, Decoder] = {**sides_of_model, **llamas, "onnxruntime": ort_side}
        prompts = np.random.default_rng(batch).integers(
            0, config.vocab_size, (batch, PROMPT_TOKENS)).astype(np.int64)
        times: dict[str, list[float]] = {side: [] for side in sides}
        outputs: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for decode in sides.values():  # warm-up
                decode(prompts, min(new, 4))
            for _ in range(rounds):
                for side, decode in sides.items():
                    start = time.perf_counter()
                    outputs[side] = decode(prompts, new)
                    times[side].append(time.perf_counter() - start)
        for decoder in llamas.values():
            decoder.close()
        tok_s = {side: batch * new / statistics.median(t) for side, t in times.items()}
        entry: dict[str, Any] = {
            "tokens_per_s": tok_s,
            "range_tokens_per_s": {side: [batch * new / max(t), batch * new / min(t)]
                                   for side, t in times.items()},
            "ratio_over_gptkit": {side: v / tok_s[reference] for side, v in tok_s.items()},
            "same_tokens_as_gptkit_fp32": {side: float((o == outputs["gptkit_fp32"]).mean())
                                           for side, o in outputs.items()
                                           if side != "gptkit_fp32"},
        }
        fastest_llama = max(tok_s[s] for s in llamas)
        if fastest_llama > tok_s[reference]:
            entry["gptkit_profile"] = profile_step(fast if fast is not None else model, prompts)
        results[f"batch_{batch}"] = entry
    return results


def report(name: str, r: dict[str, Any]) -> None:
    print(f"{name}: {r['parameters']:,} parameters, {r['new_tokens']} new tokens, gptkit "
          f"default {r['gptkit_default_dtype']}", flush=True)
    for key, entry in r.items():
        if not key.startswith("batch_"):
            continue
        cells = ", ".join(f"{side} {v:,.1f} ({entry['ratio_over_gptkit'][side]:.2f}x)"
                          for side, v in entry["tokens_per_s"].items())
        print(f"  {key.replace('_', ' ')}: tok/s (vs gptkit) {cells}", flush=True)
        prof = entry.get("gptkit_profile")
        if prof:
            ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in prof["top_ops"][:6])
            print(f"    gptkit step {prof['step_ms']:.2f} ms: {ops}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/decode_runtimes.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads for every runtime")
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds,
                               "prompt_tokens": PROMPT_TOKENS, "shapes": {}}
    for name in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            shape = bench_shape(SHAPES[name], args.batches, args.new_tokens, args.rounds,
                                args.threads, Path(tmp))
        report(name, shape)
        results["shapes"][name] = shape
    write_results(args.json, results)


if __name__ == "__main__":
    main()
