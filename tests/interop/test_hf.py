"""Hugging Face interop: export loads in transformers, import gives the same function, the
tokenizers agree id for id, --init-from starts from the imported weights, bad input is one line.

Tiny random models only, everything under tmp_path, no network.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptkit.cli import main
from gptkit.config import ModelConfig, RunConfig, load_config, save_config
from gptkit.errors import GptkitError
from gptkit.generation.sampling import generate
from gptkit.model import GPT
from gptkit.run import load_run
from gptkit.tokenizers import Tokenizer
from gptkit.train import checkpoint
from tests.generation_opts import opts
from tests.test_cli import run_cli

transformers = pytest.importorskip("transformers")

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "You are all resolved rather to die than to famish?  The quick brown fox jumps over 12 "
    "lazy dogs; it's 3.14 o'clock!\n\tTabs\tand   spaces.\r\n"
    "中文字符测试，汉字。 Ünïcödé ñ café — “quotes” 😀🎉 👩‍👩‍👧 <|endoftext|> end\n"
) * 20
PIECES = [
    "hello", " world", "ROMEO:", " the", "'s", "123", "3.14", "!?", ",", "a", "Z", " ", "  ",
    "    ", "\n", "\n\n", "\t", " \n ", "\r\n", "   \n  ", "中文", "汉字测试", "，", "😀", "🎉",
    "👩‍👩‍👧", "é", "ñ", "Ünïcödé", "\u00a0", "\u3000", "<|endoftext|>", "<unk>", "<|end",
    "endoftext|>", "~", "\u200b", "ǅ", "ß",
]


def varied_strings(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    fixed = ["", " ", "\n", "<|endoftext|>", "<|endoftext|><|endoftext|>", " <|endoftext|> ",
             "x<|endoftext|>y", "a\n\n\n   b", "中" * 30, "😀" * 5]
    return fixed + ["".join(rng.choices(PIECES, k=rng.randint(1, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers_by_kind(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    """char, trained byte-level BPE, and a GPT-2-style one read from vocab.json + merges.txt."""
    bpe = Tokenizer.train_bpe([CORPUS], 300)
    folder = tmp_path_factory.mktemp("gpt2-files")
    bpe.backend.model.save(str(folder))  # vocab.json + merges.txt, as GPT-2 ships them
    return {
        # some of PIECES' characters are unknown to it
        "char": Tokenizer.train_char([CORPUS.replace("ß", "").replace("~", "")]),
        "bpe": bpe,
        "gpt2": Tokenizer.from_gpt2_files(folder),
    }


def jitter(model: torch.nn.Module, seed: int = 0) -> None:
    """Make biases and LayerNorms non-trivial (both libraries initialise them to 0 and 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)


def make_run(path: Path, tokenizer: Tokenizer, *, pad: int = 0, bias: bool = True,
             never_ends: bool = False, **options: Any) -> Path:
    """A run directory as the trainer writes it, holding a tiny random model.

    `never_ends` lowers the end-of-text logit far enough that sampling never draws it, so
    generation runs to its length limit.
    """
    cfg = RunConfig(name=path.name, model=ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tokenizer.vocab_size + pad,
        bias=bias, **options))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    jitter(model)
    if never_ends:
        with torch.no_grad():  # the head is tied to wte: this moves the EOT logit by -50
            eot = model.transformer.wte.weight[tokenizer.eot_id]
            model.transformer.ln_f.bias.sub_(50 * eot / eot.pow(2).sum())
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    tokenizer.save(path / "tokenizer.json")
    checkpoint.save_best(path, model, {"step": 0, "val_loss": 1.0, "tokens_seen": 0})
    return path


def hf_folder(path: Path, tokenizer: Tokenizer, *, weights: str = "safetensors",
              tokenizer_files: str = "json", n_positions: int = 64) -> torch.nn.Module:
    """A random GPT2LMHeadModel saved as transformers does, with GPT-2-style tokenizer files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eot = tokenizer.eot_id
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=n_positions, n_embd=32,
                        n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(1)
    hf = GPT2LMHeadModel(config).eval()
    jitter(hf, seed=1)
    if weights == "safetensors":
        hf.save_pretrained(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(path)
        torch.save(hf.state_dict(), path / "pytorch_model.bin")
    if tokenizer_files == "json":
        tokenizer.save(path / "tokenizer.json")
    else:
        tokenizer.backend.model.save(str(path))
    return hf


@contextmanager
def transformers_log() -> Iterator[list[logging.LogRecord]]:
    """Every warning transformers logs meanwhile (its load report among them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def expect_error(capsys: pytest.CaptureFixture[str], *argv: str, match: str) -> None:
    code, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("gptkit: error: "), err
    assert "Traceback" not in err and match.lower() in lines[0].lower(), lines[0]


def no_leftovers(target: Path) -> None:
    assert not target.exists()
    assert not list(target.parent.glob(f".tmp-{target.name}*"))


def padded(seqs: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, ...]:
    """ids, attention mask and HF-style position ids of a padded batch."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, cols] = torch.tensor(seq)
        mask[i, cols] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


TEXTS = ["ROMEO:\nSpeak, speak.", "中文 😀 café", "a", "You are all resolved rather to die\n\n"]


def assert_same_function(gpt: GPT, hf: torch.nn.Module, seqs: list[list[int]]) -> float:
    """Logits agree alone, and in left- and right-padded batches at the real positions."""
    worst = 0.0
    with torch.no_grad():
        alone = [gpt(torch.tensor([s]))[0][0] for s in seqs]
        for seq, ref in zip(seqs, alone, strict=True):
            theirs = hf(input_ids=torch.tensor([seq])).logits[0]
            worst = max(worst, (theirs - ref).abs().max().item())
        for left in (False, True):
            ids, mask, pos = padded(seqs, pad=0, left=left)
            theirs = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            ours = gpt(ids, attention_mask=mask, position_ids=pos)[0]
            for i, ref in enumerate(alone):
                real = mask[i].bool()
                worst = max(worst, (theirs[i][real] - ref).abs().max().item(),
                            (ours[i][real] - ref).abs().max().item())
    assert worst < 1e-5, worst
    return worst


def test_help_explains_import_and_export():
    for command in ("import", "export"):
        text = subprocess.run([sys.executable, "-m", "gptkit", command, "--help"],
                              capture_output=True, text=True, check=True).stdout
        assert "--out" in text and "--overwrite" in text and "Hugging Face" in text


# --- export ---------------------------------------------------------------------------------------
EXPORT_CASES = {"char": dict(pad=0, bias=False), "bpe": dict(pad=13, bias=True),
                "gpt2": dict(pad=0, bias=True)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory,
             tokenizers_by_kind: dict[str, Tokenizer]) -> dict[str, tuple[Path, Path]]:
    """kind -> (run directory, its export), made through the CLI."""
    root = tmp_path_factory.mktemp("export")
    result = {}
    for kind, options in EXPORT_CASES.items():
        run = make_run(root / f"run-{kind}", tokenizers_by_kind[kind], **options)
        out = root / f"hf-{kind}"
        main(["export", str(run), "--format", "hf", "--out", str(out)])
        result[kind] = (run, out)
    return result


@pytest.mark.parametrize("kind", list(EXPORT_CASES))
def test_export_loads_in_transformers_and_computes_the_same(kind, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run_dir, out = exported[kind]
    with transformers_log() as records:
        hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        tok = AutoTokenizer.from_pretrained(out)
    assert not any(info.values()), info  # missing, unexpected, mismatched keys, errors
    assert not records, [r.getMessage() for r in records]
    run = load_run(run_dir)
    assert hf.config.vocab_size == run.model.config.vocab_size  # padded rows included
    eot = run.tokenizer.eot_id
    assert tok.eos_token_id == eot and tok.pad_token_id == eot
    assert len(tok) == run.tokenizer.vocab_size
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == eot and generation.pad_token_id == eot
    assert_same_function(run.model, hf.eval(), [run.tokenizer.encode(t) for t in TEXTS])


@pytest.mark.parametrize("kind", list(EXPORT_CASES))
def test_exported_tokenizer_output_feeds_the_exported_model_as_is(kind, exported):
    """`model(**tok(text))` and `generate(**tok(text))` compute what gptkit computes.

    transformers 4.x's tokenizer also returned `token_type_ids` unless told otherwise, and
    GPT-2 adds them as embeddings: other logits and other text, with no error.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, out = exported[kind]
    run = load_run(run_dir)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        inputs = tok(text, return_tensors="pt")
        assert sorted(inputs) == ["attention_mask", "input_ids"], text
        with torch.no_grad():
            theirs = hf(**inputs).logits
            ours = run.model(inputs["input_ids"])[0]
            new = hf.generate(**inputs, do_sample=False, max_new_tokens=6)
        assert (theirs - ours).abs().max().item() < 1e-5, text
        expected = generate(run.model, inputs["input_ids"][0].tolist(),
                            opts(max_new_tokens=6, temperature=0.0), eot_id=run.tokenizer.eot_id)
        assert torch.equal(new, expected), text


def test_pipeline_with_its_defaults_stays_inside_the_context(tmp_path, tokenizers_by_kind):
    """`pipeline("text-generation", model=EXPORT)(prompt)`, nothing set, on a 64-token model.

    transformers 5.x's pipeline asks for 256 new tokens unless the model's generation config
    bounds the length: past 64 positions GPT-2 raised an IndexError. It now generates up to
    the context, prompt included, and stops there (the model never draws end-of-text).
    """
    from transformers import pipeline

    tokenizer = tokenizers_by_kind["char"]
    run = make_run(tmp_path / "run", tokenizer, never_ends=True)
    out = tmp_path / "hf"
    main(["export", str(run), "--format", "hf", "--out", str(out)])
    generator = pipeline("text-generation", model=str(out))
    torch.manual_seed(0)
    text = generator("ROMEO:")[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
    torch.manual_seed(0)
    ids = generator("ROMEO:", return_tensors=True)[0]["generated_token_ids"]
    assert len(ids) == 64 and ids[:6] == tokenizer.encode("ROMEO:")
    assert tokenizer.eot_id not in ids
    asked = generator("ROMEO:", max_new_tokens=10, return_tensors=True)  # still obeyed
    assert len(asked[0]["generated_token_ids"]) == 6 + 10


@pytest.mark.parametrize("kind", list(EXPORT_CASES))
def test_exported_tokenizer_gives_the_same_ids(kind, exported):
    from transformers import AutoTokenizer

    run_dir, out = exported[kind]
    ours = Tokenizer.load(run_dir / "tokenizer.json")
    theirs = AutoTokenizer.from_pretrained(out)
    texts = varied_strings()
    for text in texts:
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids) == ours.decode(ids), text
    # the end-of-text token is one special id inside text, for both
    assert ours.encode("a<|endoftext|>b").count(ours.eot_id) == 1
    if kind == "char":  # unknown characters map to <unk> for both
        unk = ours.backend.token_to_id("<unk>")
        assert theirs("ß~")["input_ids"] == ours.encode("ß~") == [unk, unk]


def test_export_of_last_checkpoint_and_overwrite(tiny_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    code, _, err = run_cli(capsys, "export", str(tiny_run), "--out", str(out), "--checkpoint",
                           "last")
    assert code == 0, err
    expect_error(capsys, "export", str(tiny_run), "--out", str(out), match="already exists")
    assert run_cli(capsys, "export", str(tiny_run), "--out", str(out), "--overwrite")[0] == 0
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    run = load_run(tiny_run)
    assert_same_function(run.model, hf, [run.tokenizer.encode(t) for t in TEXTS[:1]])
    card = (out / "README.md").read_text()  # the run's model card travels with it
    assert card.startswith("---\nlibrary_name: transformers")
    assert card.endswith((tiny_run / "best" / "README.md").read_text())


@pytest.mark.parametrize(("option", "shown"), [
    ({"pos_embedding": "rope"}, "model.pos_embedding=rope"),
    ({"norm": "rmsnorm"}, "model.norm=rmsnorm"),
    ({"qk_norm": True}, "model.qk_norm=true"),
    ({"mlp": "relu2"}, "model.mlp=relu2"),
    ({"mlp": "swiglu"}, "model.mlp=swiglu"),
    ({"tie_embeddings": False}, "model.tie_embeddings=false"),
], ids=str)
def test_export_refuses_architecture_options_beyond_gpt2(option, shown, tmp_path, capsys,
                                                         tokenizers_by_kind):
    from gptkit.interop.hf import to_transformers

    run = make_run(tmp_path / "run", tokenizers_by_kind["char"], **option)
    out = tmp_path / "hf"
    expect_error(capsys, "export", str(run), "--out", str(out),
                 match=f"cannot export a model with {shown}: Hugging Face export needs the "
                       "GPT-2 architecture")
    no_leftovers(out)
    with pytest.raises(GptkitError, match=shown):
        to_transformers(load_run(run).model)


# --- import ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
@pytest.mark.parametrize("tokenizer_files", ["json", "vocab"])
def test_import_gives_the_same_model_and_tokenizer(weights, tokenizer_files, tmp_path, capsys,
                                                   tokenizers_by_kind):
    tokenizer = tokenizers_by_kind["bpe"]
    hf = hf_folder(tmp_path / "hf", tokenizer, weights=weights, tokenizer_files=tokenizer_files)
    code, out, err = run_cli(capsys, "import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"))
    assert code == 0, err
    run = load_run(tmp_path / "run")
    assert run.config.data.tokenizer == "gpt2" and run.config.model.n_embd == 32
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best", "config.yaml", "tokenizer.json"]
    for text in varied_strings(50):
        assert run.tokenizer.encode(text) == tokenizer.encode(text)
    assert_same_function(run.model, hf, [tokenizer.encode(t) for t in TEXTS])
    assert load_run(tmp_path / "run", which="last").weights == run.weights  # no checkpoints


def test_import_reads_the_original_gpt2_layout(tmp_path, capsys, tokenizers_by_kind):
    """openai-community/gpt2's files: no `transformer.` prefix, causal-mask buffers saved."""
    tokenizer = tokenizers_by_kind["gpt2"]
    hf = hf_folder(tmp_path / "hf", tokenizer)
    weights = tmp_path / "hf" / "model.safetensors"
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(weights)).items()}
    for layer in range(2):
        state[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(weights))
    assert run_cli(capsys, "import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"))[0] == 0
    assert_same_function(load_run(tmp_path / "run").model, hf, [tokenizer.encode(TEXTS[0])])


def test_imported_run_works_with_info_eval_and_sample(tmp_path, capsys, data_dir,
                                                      tokenizers_by_kind):
    hf_folder(tmp_path / "hf", tokenizers_by_kind["bpe"])
    assert run_cli(capsys, "import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"))[0] == 0
    run = str(tmp_path / "run")
    code, out, _ = run_cli(capsys, "info", run)
    assert code == 0 and "imported" in out
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert f"imported from Hugging Face `{tmp_path / 'hf'}`" in card and "## Training" not in card
    code, out, err = run_cli(capsys, "eval", run, "--json")
    assert code == 0, err
    assert json.loads(out)["loss"] > 0
    code, out, err = run_cli(capsys, "sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "5")
    assert code == 0, err


def test_round_trip_keeps_every_weight(tmp_path, capsys, tokenizers_by_kind):
    tokenizer = tokenizers_by_kind["gpt2"]
    make_run(tmp_path / "a", tokenizer, pad=5)
    assert run_cli(capsys, "export", str(tmp_path / "a"), "--out", str(tmp_path / "hf"))[0] == 0
    assert run_cli(capsys, "import", str(tmp_path / "hf"), "--out", str(tmp_path / "b"))[0] == 0
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert a.model.config == b.model.config
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.tokenizer.backend.to_str() == b.tokenizer.backend.to_str()


def test_import_downloads_only_the_files_it_needs(tmp_path, capsys, monkeypatch,
                                                  tokenizers_by_kind):
    import huggingface_hub

    folder = tmp_path / "snapshot"
    hf_folder(folder, tokenizers_by_kind["bpe"], weights="bin")
    calls = []

    def fake_snapshot_download(repo_id, *, allow_patterns, local_files_only=False, **kw):
        calls.append((repo_id, list(allow_patterns), local_files_only))
        return str(folder)

    monkeypatch.delenv("GPTKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    code, _, err = run_cli(capsys, "import", "distilgpt2", "--out", str(tmp_path / "run"))
    assert code == 0, err
    first, second = calls
    assert first[0] == "distilgpt2"
    assert "model.safetensors" in first[1] and "config.json" in first[1]
    assert not any("bin" in p or "*" in p for p in first[1])
    assert second[1] == ["pytorch_model.bin"] and not first[2]  # no safetensors: the .bin
    assert load_run(tmp_path / "run").config.name == "run"


# --- init-from ------------------------------------------------------------------------------------
FINETUNE = ["train.max_steps=4", "train.micro_batch_size=4", "train.eval_tokens=256",
            "train.eval_interval=2", "train.log_interval=1", "train.checkpoint_interval=2",
            "train.keep_checkpoints=3", "train.warmup_steps=1", "train.lr=1e-4"]


@pytest.fixture
def imported(tmp_path: Path, data_dir: Path, tokenizers_by_kind) -> tuple[Path, torch.nn.Module]:
    hf = hf_folder(tmp_path / "hf", tokenizers_by_kind["gpt2"], n_positions=32)
    main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "gpt2")])
    return tmp_path / "gpt2", hf


def test_init_from_starts_at_the_imported_models_loss(imported, tmp_path, data_dir):
    from gptkit.data.loader import RandomWindows
    from gptkit.data.prepare import prepare
    from gptkit.evaluate import score_tokens
    from gptkit.train.trainer import train

    source, _ = imported
    cfg = load_config("shakespeare-char", [*FINETUNE, f"train.init_from={source}",
                                           "train.precision=fp32"])  # compared with fp32 below
    m = cfg.model  # the recipe's model section gave way to the imported one
    assert (m.n_layer, m.n_embd, m.block_size, m.bias, m.vocab_size) == (2, 32, 32, True, 300)
    assert cfg.data.tokenizer == "gpt2"
    train(cfg, tmp_path / "ft", progress=False)
    records = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").open()]
    first_eval = next(r for r in records if r["kind"] == "eval")
    first_step = next(r for r in records if r["kind"] == "train")
    assert first_eval["step"] == 0 and first_step["step"] == 1

    reference = load_run(source)
    data = prepare(cfg.data, tokenizer=reference.tokenizer)
    windows = RandomWindows(data.tokens("train"), block_size=32, micro_batch_size=4,
                            accum_steps=1, seed=cfg.train.seed)
    x, y = windows.step_batches(0)[0]
    with torch.no_grad():
        step0_loss = reference.model(x, y)[1].item()
    val = score_tokens(reference.model, data.tokens("val"), block_size=32,
                       batch_size=max(cfg.eval.batch_size, 4), max_windows=math.ceil(256 / 32),
                       special_ids=[reference.tokenizer.eot_id])
    assert first_step["loss"] == pytest.approx(step0_loss, abs=1e-5)
    assert first_eval["val_loss"] == pytest.approx(val.nll / val.tokens, abs=1e-6)
    tokenizer = Tokenizer.load(tmp_path / "ft" / "tokenizer.json")
    assert tokenizer.sha256() == reference.tokenizer.sha256()


def test_init_from_run_resumes_without_its_source(imported, tmp_path, capsys):
    source, _ = imported
    ft = tmp_path / "ft"
    args = ["train", "--out", str(ft), "--no-progress"]
    sets = [a for s in FINETUNE for a in ("--set", s)]
    code, _, err = run_cli(capsys, *args, "--init-from", str(source), *sets)
    assert code == 0, err
    final = load_file(str(ft / "checkpoints" / "step-000004" / "model.safetensors"))
    source.rename(tmp_path / "moved")  # the init weights are needed at step 0 only
    shutil.rmtree(ft / "checkpoints" / "step-000004")
    shutil.rmtree(ft / "best")
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code == 0, err
    again = load_file(str(ft / "checkpoints" / "step-000004" / "model.safetensors"))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def test_init_from_refuses_a_new_shape(imported, tmp_path, capsys):
    source, _ = imported
    out = tmp_path / "ft"
    base = ["train", "--out", str(out), "--no-progress", "--init-from", str(source)]
    expect_error(capsys, *base, "--set", "model.n_layer=4", match="keeps its shape")
    no_leftovers(out)
    expect_error(capsys, "train", "--out", str(out), "--init-from", str(tmp_path / "nothing"),
                 match="not a gptkit run")
    no_leftovers(out)
    expect_error(capsys, *base, "--resume", match="--init-from")
    cfg = load_config("shakespeare-char", [f"train.init_from={source}", "model.dropout=0.2"])
    assert cfg.model.dropout == 0.2 and cfg.model.n_layer == 2
    recipe = tmp_path / "mine.yaml"  # a recipe naming init_from must not name another shape
    recipe.write_text(f"train:\n  init_from: {source}\nmodel:\n  n_embd: 64\n")
    with pytest.raises(GptkitError, match="model.n_embd=64 conflicts"):
        load_config(str(recipe))


def test_gpt2_shakespeare_recipe_takes_the_imported_shape(imported, tmp_path, monkeypatch):
    source, _ = imported
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    source.rename(tmp_path / "runs" / "gpt2")  # where the recipe looks
    cfg = load_config("gpt2-shakespeare")
    assert cfg.train.init_from == "runs/gpt2" and cfg.model.block_size == 32
    assert cfg.model.dropout == 0.0 and cfg.data.tokenizer == "gpt2"


# --- bad input ------------------------------------------------------------------------------------
class WritesAFile:
    """Unpickling this would create a file: pytorch_model.bin must never be unpickled so."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def break_folder(folder: Path, how: str, tokenizer: Tokenizer) -> None:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    weights = folder / "model.safetensors"
    if how == "architecture":
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    elif how == "no weights":
        weights.unlink()
    elif how == "missing weight":
        state = load_file(str(weights))
        del state["transformer.h.1.mlp.c_fc.bias"]
        save_file(state, str(weights))
    elif how == "shape":
        config.update(n_embd=64)
    elif how == "tokenizer too big":
        config.update(vocab_size=tokenizer.vocab_size - 10)
    elif how == "pickle":
        weights.unlink()
        torch.save({"x": WritesAFile(folder / "pwned")}, folder / "pytorch_model.bin")
    config_file.write_text(json.dumps(config))


BAD = {"architecture": "unsupported architecture LlamaForCausalLM",
       "no weights": "no weights", "missing weight": "missing",
       "shape": "has shape", "tokenizer too big": "tokenizer",
       "pickle": "cannot read weights"}


@pytest.mark.parametrize("how", list(BAD))
def test_import_rejects_bad_folders(how, tmp_path, capsys, tokenizers_by_kind):
    tokenizer = tokenizers_by_kind["bpe"]
    hf_folder(tmp_path / "hf", tokenizer)
    break_folder(tmp_path / "hf", how, tokenizer)
    expect_error(capsys, "import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"),
                 match=BAD[how])
    no_leftovers(tmp_path / "run")
    assert not (tmp_path / "hf" / "pwned").exists()


def test_import_of_a_hub_id_offline_or_without_network(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    out = tmp_path / "run"
    expect_error(capsys, "import", "gptkit-tests/no-such-model", "--out", str(out),
                 match="downloads are off")
    no_leftovers(out)
    expect_error(capsys, "import", str(tmp_path / "not" / "here"), "--out", str(out),
                 match="neither a folder")

    def unreachable(*args, **kwargs):
        raise OSError("Connection refused\nmore detail")

    monkeypatch.delenv("GPTKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    expect_error(capsys, "import", "gpt2", "--out", str(out), match="cannot download 'gpt2'")
    no_leftovers(out)


def test_existing_targets_are_not_overwritten(tmp_path, capsys, tokenizers_by_kind):
    tokenizer = tokenizers_by_kind["bpe"]
    run = make_run(tmp_path / "run", tokenizer)
    hf_folder(tmp_path / "hf", tokenizer)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for argv in (["export", str(run), "--out", str(mine)],
                 ["import", str(tmp_path / "hf"), "--out", str(mine)]):
        expect_error(capsys, *argv, match="already exists")
        expect_error(capsys, *argv, "--overwrite", match="refusing to overwrite")
        assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    expect_error(capsys, "import", str(tmp_path / "hf"), "--out", str(run), match="already exists")
    assert run_cli(capsys, "import", str(tmp_path / "hf"), "--out", str(run), "--overwrite")[0] == 0
    assert load_run(run).config.data.tokenizer == "gpt2"
    expect_error(capsys, "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"),
                 match="does not exist")
    no_leftovers(tmp_path / "x")


def test_from_transformers_is_the_inverse_of_to_transformers():
    """from_transformers (README: models in memory) gives back the same function."""
    from gptkit.interop.hf import from_transformers, to_transformers

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=23)).eval()
    back = from_transformers(to_transformers(model))
    ids = torch.tensor([[1, 5, 7, 22]])
    assert torch.allclose(model(ids)[0], back(ids)[0], atol=1e-6)
    assert back.lm_head.weight is back.transformer.wte.weight  # still tied
