"""`data.source: hf:NAME`: Hugging Face data sets from local files only (no network)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

datasets = pytest.importorskip(
    "datasets", reason="the hf: source needs `datasets`: pip install 'gptkit[datasets]'")

from gptkit.config import DataConfig, build_config, load_config  # noqa: E402
from gptkit.data.hf_source import HfOptions  # noqa: E402
from gptkit.data.prepare import prepare  # noqa: E402
from gptkit.data.sources import load_source  # noqa: E402
from gptkit.errors import GptkitError  # noqa: E402
from gptkit.finetune.records import Record, load_records, read_records  # noqa: E402
from gptkit.train.trainer import train  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.finetune.tasks import reverse_task, run_sft  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "saw", "one", "red", "bird", "fly",
         "over", "some", "old", "green", "trees"]
DOCS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 5)) for i in range(40)]


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_dataset writes Arrow files to its cache: one per test, never ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write(folder: Path, builder: str, docs: list[str] = DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"docs.{ {'text': 'txt'}.get(builder, builder) }"
    if builder == "json":
        path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n"
                                for i, d in enumerate(docs)))
    elif builder == "csv":
        datasets.Dataset.from_dict({"id": list(range(len(docs))), "text": docs}).to_csv(path)
    elif builder == "parquet":
        datasets.Dataset.from_dict({"id": list(range(len(docs))), "text": docs}).to_parquet(path)
    else:
        path.write_text("".join(d + "\n" for d in docs))
    return path


def hf(path: Path, streaming: bool = False) -> HfOptions:
    return HfOptions(None, (str(path),), streaming)


@pytest.mark.parametrize("builder", ["json", "csv", "parquet", "text"])
@pytest.mark.parametrize("streaming", [False, True])
def test_builders_read_local_files_cut_like_your_own_files(tmp_path, builder, streaming):
    path = write(tmp_path, builder)
    got = load_source(f"hf:{builder}", ["train", "val"], hf=hf(path, streaming),
                      val_fraction=0.1)
    assert got == {"train": DOCS[:36], "val": DOCS[36:]}  # one document per row


def test_a_save_to_disk_folder_gives_its_own_splits(tmp_path):
    folder = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"body": DOCS[:30]}),
        "validation": datasets.Dataset.from_dict({"body": DOCS[30:]}),
    }).save_to_disk(str(folder))
    for streaming in (False, True):
        got = load_source(f"hf:{folder}", ["train", "val", "validation"], text_field="body",
                          hf=HfOptions(streaming=streaming))
        assert got == {"train": DOCS[:30], "val": DOCS[30:], "validation": DOCS[30:]}


def config(path: Path, *overrides: str) -> DataConfig:
    return build_config({"data": {"source": "hf:json", "hf_data_files": [str(path)],
                                  "tokenizer": "char"}}).data.updated(
        **dict(o.split("=", 1) for o in overrides))


def test_streaming_writes_the_same_shards(tmp_path):
    path = write(tmp_path, "json")
    a = prepare(config(path), cache=tmp_path / "a")
    b = prepare(config(path, "hf_streaming=true"), cache=tmp_path / "b")
    assert a.meta["splits"]["train"]["documents"] == 36
    for split in ("train", "val"):
        assert a.meta["splits"][split]["tokens"] > 0
        assert list(a.tokens(split)[:]) == list(b.tokens(split)[:])
    # the cache is keyed by the files: a changed file is tokenised again
    before = list(a.tokens("val")[:])
    write(tmp_path, "json", DOCS[::-1])
    c = prepare(config(path), cache=tmp_path / "a")
    assert list(c.tokens("val")[:]) != before


def test_training_from_an_hf_source_resumes_exactly(tmp_path, monkeypatch):
    path = write(tmp_path, "json", DOCS * 10)
    cfg = load_config("shakespeare-char", [
        *TINY, "data.source=hf:json", f"data.hf_data_files=[{path}]", "data.hf_streaming=true",
        "train.max_steps=6", "train.checkpoint_interval=3", "train.eval_interval=3",
        "train.eval_tokens=256", "train.keep_checkpoints=5"])
    straight = tmp_path / "straight"
    train(cfg, straight, progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000006")
    def unread(*args: object, **kwargs: object) -> None:
        raise AssertionError("resume read the data set again")

    # resume reads the prepared shards, never the data set again
    monkeypatch.setattr("gptkit.data.hf_source.load_splits", unread)
    train(cfg, resumed, resume=True, progress=False)
    step = "checkpoints/step-000006/model.safetensors"
    a, b = load_file(str(straight / step)), load_file(str(resumed / step))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_reads_the_rows_as_records(tmp_path):
    source = reverse_task(tmp_path / "rev.jsonl", n=60)
    cfg = build_config({"data": {"source": "hf:json", "hf_data_files": [str(source)],
                                 "format": "sft"}}).data
    rows = load_records(cfg)
    assert [r.fields for r in rows] == [r.fields for r in read_records(source)]
    assert rows[0].where == "hf:json [train] row 1" and isinstance(rows[0], Record)
    result = run_sft(Path("hf:json"), tmp_path / "run", steps=4,
                     data={"hf_data_files": [str(source)]})
    assert result.last_eval["val_token_accuracy"] >= 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"text_field": "body"}, r"has no field 'body'; its fields: id, text; set data.text_field"),
    ({"splits": ["test"]}, r"has no split 'test'; its splits: train"),
])
def test_bad_settings_get_one_line(tmp_path, kwargs, match):
    path = write(tmp_path, "json")
    with pytest.raises(GptkitError, match=match) as error:
        load_source("hf:json", kwargs.pop("splits", ["train"]), hf=hf(path), **kwargs)
    assert "\n" not in str(error.value)


def test_a_builder_without_files_and_unknown_fields_are_refused(tmp_path):
    with pytest.raises(GptkitError, match="set data.hf_data_files"):
        load_source("hf:json", ["train"])
    from gptkit.config.usage import check_used

    with pytest.raises(GptkitError, match=r"data.hf_config=x does nothing here; it applies "
                                          r"with data.source hf:NAME"):
        check_used(load_config("shakespeare-char", ["data.hf_config=x"]), {"train"})


def test_offline_and_not_cached_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_OFFLINE", "1")
    with pytest.raises(GptkitError, match=r"not in the Hugging Face cache and downloads are "
                                          r"off") as error:
        load_source("hf:nobody-here/no-such-set", ["train"])
    assert "\n" not in str(error.value)


def test_without_datasets_the_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(GptkitError, match=r"pip install 'gptkit\[datasets\]'"):
        load_source("hf:json", ["train"], hf=hf(write(tmp_path, "json")))
