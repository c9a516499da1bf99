"""The command line: every command's help, the happy paths, and every bad input (exit 2)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptkit.cli import main
from gptkit.tokenizers import Tokenizer


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what earlier set-up printed (e.g. transformers' progress bars)
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def expect_error(capsys, *argv: str, match: str) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptkit: error: "), err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


def test_help_explains_every_command():
    """`gptkit --help` lists every command, and each command's own --help works and shows the
    options every command shares (the list comes from the parser: a new command is checked
    without editing this test)."""
    from gptkit.cli import build_parser, leaf_parsers

    top = subprocess.run([sys.executable, "-m", "gptkit", "--help"], capture_output=True,
                         text=True, check=True).stdout
    leaves = [leaf.prog.split()[1:] for leaf in leaf_parsers(build_parser())]
    assert len(leaves) == 21 and ["viz", "attention"] in leaves and ["arena"] in leaves
    assert ["sweep"] in leaves
    for command in leaves:
        assert command[0] in top
        text = subprocess.run([sys.executable, "-m", "gptkit", *command, "--help"],
                              capture_output=True, text=True, check=True).stdout
        assert text.startswith(f"usage: gptkit {' '.join(command)}"), text[:200]
        assert "--data-dir" in text and "--debug" in text, command


def test_eval_reports_loss_perplexity_and_bits_per_byte(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "eval", str(tiny_run), "--json")
    assert code == 0
    result = json.loads(out)
    # 111,541 val tokens in non-overlapping windows of 32: all but each window's first scored
    assert result["split"] == "val" and result["tokens"] == 111540 - 111540 // 32
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-6)
    assert 0 < result["bits_per_byte"] < 8 and result["word_perplexity"] is None
    code, out, _ = run_cli(capsys, "eval", str(tiny_run), "--stride", "16")
    assert code == 0 and "stride 16" in out and "bits per byte" in out


def test_eval_wikitext_reports_word_perplexity(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "eval", str(tiny_run), "--data", "wikitext2", "--split",
                           "test", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["words"] == 245569 and result["word_perplexity"] > result["perplexity"]


def test_eval_reports_the_test_split_not_the_one_that_selected(tiny_run, capsys, tmp_path):
    """A run under WikiText's offline protocol picked best/ on valid-tail: eval reports test."""
    from gptkit.config import read_config, save_config

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = read_config(run / "config.yaml")
    cfg = cfg.updated(data={"source": "wikitext2", "protocol": "offline", "train_split":
                            "valid-head", "eval_split": "valid-tail", "test_split": "test"})
    save_config(cfg, run / "config.yaml")
    code, out, err = run_cli(capsys, "eval", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["split"] == "test"
    assert "become <unk>" in err  # Shakespeare's characters lack some of WikiText's


def test_sample_is_reproducible_and_streams(tiny_run, capsys):
    args = ("sample", str(tiny_run), "--prompt", "ROMEO:", "--max-new-tokens", "30",
            "--seed", "7", "--num-samples", "2")
    _, first, _ = run_cli(capsys, *args)
    _, second, _ = run_cli(capsys, *args)
    assert first == second and first.startswith("ROMEO:")
    _, streamed, _ = run_cli(capsys, *args, "--stream")
    assert streamed == first
    _, greedy1, _ = run_cli(capsys, "sample", str(tiny_run), "--temperature", "0", "--seed", "1")
    _, greedy2, _ = run_cli(capsys, "sample", str(tiny_run), "--temperature", "0", "--seed", "2")
    assert greedy1 == greedy2


def test_info_describes_a_run_and_a_recipe(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "info", str(tiny_run), "--json")
    info = json.loads(out)
    assert code == 0 and info["model"]["n_layer"] == 2 and info["parameters"] > 0
    assert info["data"]["splits"]["train"]["tokens"] > 0 and "val_loss" in info["best"]
    code, out, _ = run_cli(capsys, "info", "--recipe", "shakespeare-char")
    assert code == 0 and "FLOPs/token" in out and "parameters" in out


# --- bad input: one line, exit 2, nothing modified ----------------------------------------


def test_data_missing_offline(capsys, tmp_path):
    expect_error(capsys, "train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"),
                 match="tinyshakespeare")
    assert not (tmp_path / "r").exists()


def test_empty_corpus(capsys, tmp_path):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("   \n\t\n")
    expect_error(capsys, "train", "--set", f"data.source={corpus}", "--out",
                 str(tmp_path / "r"), match="empty")


def test_corpus_not_utf8(capsys, tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    line = expect_error(capsys, "prepare", "--set", f"data.source={corpus}", match="UTF-8")
    assert "latin1.txt" in line and "offset 3" in line


def test_prepare_writes_shards_with_workers(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 50)
    code, out, _ = run_cli(capsys, "prepare", "--set", f"data.source={corpus}", "--set",
                           "data.shard_tokens=200", "--workers", "2", "--cache-dir",
                           str(tmp_path / "cache"))
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["train:", "856"] and lines[1].endswith(" 5 shards")
    assert lines[2].split()[:2] == ["val:", "96"] and lines[2].endswith(" 1 shards")
    expect_error(capsys, "prepare", "--set", f"data.source={corpus}", "--workers", "-1",
                 match="data.workers must be >= 0")


def test_unknown_recipe_and_bad_overrides(capsys):
    expect_error(capsys, "train", "--recipe", "nope", match="unknown recipe")
    expect_error(capsys, "train", "--set", "train.lrr=1", match="unknown setting")
    expect_error(capsys, "train", "--set", "train.max_steps=many", match="must be int")
    expect_error(capsys, "train", "--set", "train.lr=-0.1", match="train.lr must be > 0")
    expect_error(capsys, "train", "--set", "train.micro_batch_size=0", match="micro_batch_size")


def test_existing_run_without_flag_is_untouched(tiny_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")}
    expect_error(capsys, "train", "--out", str(tiny_run), match="already exists")
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")} == before


def test_resume_without_a_run(capsys, tmp_path):
    expect_error(capsys, "train", "--resume", "--out", str(tmp_path / "none"),
                 match="cannot resume")


def test_resume_with_only_corrupt_checkpoints(tiny_run, capsys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    for ckpt in (copy / "checkpoints").iterdir():
        (ckpt / "optimizer.pt").write_bytes(b"")
    expect_error(capsys, "train", "--resume", "--out", str(copy), match="corrupt")


def test_context_longer_than_positions(tiny_run, capsys, tmp_path):
    expect_error(capsys, "eval", str(tiny_run), "--stride", "64", match="block_size")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    expect_error(capsys, "train", "--resume", "--out", str(copy), "--set",
                 "model.block_size=64", match="block_size")


def test_tokenizer_that_does_not_fit_the_checkpoint(tiny_run, capsys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    Tokenizer.train_char(["".join(chr(c) for c in range(0x4E00, 0x4F00))]).save(
        copy / "tokenizer.json")
    expect_error(capsys, "sample", str(copy), match="tokenizer")


def test_prompt_that_encodes_to_nothing(tiny_run, capsys):
    expect_error(capsys, "sample", str(tiny_run), "--prompt", "", match="prompt")


def test_nonsensical_sampling_numbers(tiny_run, capsys):
    expect_error(capsys, "sample", str(tiny_run), "--top-p", "1.5", match="top-p")
    expect_error(capsys, "sample", str(tiny_run), "--temperature", "-1", match="temperature")
    expect_error(capsys, "sample", str(tiny_run), "--num-samples", "0", match="num-samples")


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception, match="unknown recipe"):
        main(["train", "--recipe", "nope", "--debug"])


def test_missing_run_directory(capsys, tmp_path: Path):
    expect_error(capsys, "sample", str(tmp_path / "nothing"), match="does not exist")


@pytest.mark.parametrize("content", [b"model: [unclosed\n", b"just a string\n",
                                     b"\xff\xfe\x00\x01"])
def test_damaged_config_of_a_run(tiny_run, capsys, tmp_path, content):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "config.yaml").write_bytes(content)
    for argv in (["sample", str(copy)], ["eval", str(copy)], ["info", str(copy)],
                 ["compare", str(copy), str(tiny_run)], ["serve", str(copy), "--port", "0"],
                 ["train", "--resume", "--out", str(copy)],
                 ["export", str(copy), "--out", str(tmp_path / "hf")]):
        line = expect_error(capsys, *argv, match="config.yaml is damaged")
        assert str(copy / "config.yaml") in line


def test_out_that_is_a_file(capsys, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    expect_error(capsys, "train", "--out", str(taken), match="is a file, not a run directory")
    expect_error(capsys, "plot", str(tmp_path), "--out", str(taken / "loss.png"),
                 match="is a file, not a folder")
    assert taken.read_text() == "mine"


def test_prompts_that_are_not_unicode(tiny_run, capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("ROMEO:\ncaf\u00e9\n".encode("latin-1"))
    expect_error(capsys, "sample", str(tiny_run), "--prompts-file", str(prompts),
                 match="is not UTF-8 text (byte 10")
    # a non-UTF-8 byte on a command line reaches Python as a lone surrogate
    expect_error(capsys, "sample", str(tiny_run), "--prompt", "ab\udcff",
                 match="lone surrogate")


def test_bad_argument_types_are_one_line(capsys):
    line = expect_error(capsys, "sample", "RUN", "--max-new-tokens", "ten",
                        match="argument --max-new-tokens: invalid int value: 'ten'")
    assert "gptkit sample --help" in line
    expect_error(capsys, "eval", "RUN", "--stride", "1.5", match="invalid int value")
    expect_error(capsys, "viz", "attention", "RUN", match="required")
    expect_error(capsys, match="required: COMMAND")


def test_zero_is_no_default_for_eval_numbers(tiny_run, capsys):
    expect_error(capsys, "eval", str(tiny_run), "--stride", "0", match="--stride must be >= 1")
    expect_error(capsys, "eval", str(tiny_run), "--batch-size", "0",
                 match="--batch-size must be >= 1")


def test_overflowing_settings(capsys):
    # `info`, not `train`: the old code accepted these and would train a whole run
    expect_error(capsys, "info", "--set", "train.lr=inf", match="train.lr must be a finite")
    expect_error(capsys, "info", "--set", "train.seed=9007199254740993", match="train.seed")


def test_temperatures_too_small_to_divide_by_act_as_greedy(tiny_run, capsys):
    args = ("sample", str(tiny_run), "--prompt", "ROMEO:", "--max-new-tokens", "30")
    code, greedy, err = run_cli(capsys, *args, "--temperature", "0")
    assert code == 0, err
    for tiny in ("1e-320", "1e-45"):
        code, out, err = run_cli(capsys, *args, "--temperature", tiny)
        assert code == 0 and out == greedy, err
