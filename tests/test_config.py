from pathlib import Path

import pytest

from gptkit.config import (
    MODEL_PRESETS,
    RunConfig,
    apply_overrides,
    build_config,
    load_config,
    load_recipe,
    read_config,
    recipe_names,
    save_config,
)
from gptkit.errors import GptkitError


def test_every_shipped_recipe_loads_and_validates():
    assert {"shakespeare-char", "shakespeare-char-gpu", "wikitext2", "gpt2-124m"} <= set(
        recipe_names()
    )
    for name in recipe_names():
        cfg = load_config(name)
        assert cfg.name == name
        assert cfg.model.n_embd % cfg.model.n_head == 0


def test_default_recipe_is_nanogpt_cpu_shape():
    cfg = load_config()
    m, t = cfg.model, cfg.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (t.micro_batch_size, t.max_steps, t.lr, t.floor_lr) == (12, 2000, 1e-3, 1e-4)
    assert cfg.data.tokenizer == "char" and cfg.data.source == "tinyshakespeare"


def test_fast_recipe_is_the_default_task_with_the_options_beyond_gpt2():
    fast, default = load_config("shakespeare-char-fast"), load_config()
    assert fast.data == default.data and fast.eval == default.eval
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias"):
        assert getattr(fast.model, key) == getattr(default.model, key), key
    assert fast.train.micro_batch_size == default.train.micro_batch_size
    assert fast.train.eval_tokens == default.train.eval_tokens
    assert fast.train.max_steps < default.train.max_steps  # Muon's steps cost more
    m, t = fast.model, fast.train
    assert (m.pos_embedding, m.qk_norm, m.mlp) == ("rope", True, "relu2")
    assert (t.optimizer, t.schedule, t.cooldown_fraction, t.momentum) == ("muon", "wsd", 0.4, 0.9)


def test_gpt2_recipe_prepares_large_corpora_in_shards_with_several_processes():
    data = load_config("gpt2-124m").data
    assert (data.shard_tokens, data.workers) == (2**28, 4)
    assert (load_config().data.shard_tokens, load_config().data.workers) == (2**28, 1)


def test_overrides_are_typed():
    cfg = load_config("shakespeare-char", [
        "train.lr=3e-4", "model.n_layer=6", "model.bias=true", "train.compile=auto",
        "train.batch_tokens=1536", "name=mine", "sample.top_k=none",
    ])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.n_layer == 6 and cfg.model.bias is True
    assert cfg.train.compile is None and cfg.train.batch_tokens == 1536
    assert cfg.name == "mine" and cfg.sample.top_k is None


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.lrr=1", "did you mean 'lr'"),
        ("trian.lr=1", "did you mean 'train'"),
        ("train.max_steps=abc", "train.max_steps must be int"),
        ("train.max_steps=1.5", "train.max_steps must be int"),
        ("model.bias=maybe", "model.bias must be bool"),
        ("train.lr", "key=value"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.micro_batch_size=0", "micro_batch_size must be >= 1"),
        ("sample.top_p=1.5", "top_p must be in (0, 1]"),
        ("sample.top_p=0", "top_p must be in (0, 1]"),
        ("model.n_embd=130", "multiple of model.n_head"),
        ("model.preset=gpt5", "unknown model.preset"),
        ("data.tokenizer=words", "data.tokenizer must be char, bpe or gpt2"),
        ("train.optimizer=lion", "train.optimizer must be"),
        ("train.schedule=zigzag", "train.schedule must be cosine, linear, constant, wsd, "
         "plateau, step or exponential"),
        ("train.cooldown_fraction=1.5", "train.cooldown_fraction must be in [0, 1]"),
        ("data.shard_tokens=0", "data.shard_tokens must be >= 1"),
        ("data.workers=-1", "data.workers must be >= 0"),
    ],
)
def test_bad_overrides_name_the_problem(override, fragment):
    with pytest.raises(GptkitError, match=None) as info:
        load_config("shakespeare-char", [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(GptkitError, match="unknown recipe 'nope'.*shakespeare-char"):
        load_recipe("nope")


def test_recipe_from_path_and_unknown_key_in_yaml(tmp_path: Path):
    good = tmp_path / "r.yaml"
    good.write_text("name: custom\nmodel:\n  n_layer: 2\ntrain:\n  lr: 1.0e-2\n")
    cfg = load_config(str(good))
    assert cfg.name == "custom" and cfg.model.n_layer == 2 and cfg.train.lr == 1e-2
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(GptkitError, match="unknown setting 'train.learning_rate'"):
        load_config(str(bad))


def test_preset_fills_fields_and_explicit_values_win():
    raw = apply_overrides({"model": {"preset": "gpt2", "n_layer": 2}}, [])
    cfg = build_config(raw)
    assert cfg.model.n_layer == 2
    assert (cfg.model.n_embd, cfg.model.block_size) == (768, 1024)
    assert set(MODEL_PRESETS) >= {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


def test_save_and_read_round_trip(tmp_path: Path):
    cfg = load_config("wikitext2", ["train.max_steps=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert read_config(tmp_path / "config.yaml") == cfg
    assert build_config(RunConfig().model_dump()) == RunConfig()


def test_distributed_settings_and_their_recipes():
    assert load_config().dist.strategy == "auto"
    assert load_config("gpt2-124m").dist.fsdp_min_params == 500_000_000
    sharded = load_config("gpt2-medium-fsdp")
    assert (sharded.dist.strategy, sharded.train.activation_checkpointing) == ("fsdp", True)
    assert (sharded.dist.cpu_offload, sharded.dist.timeout_s) == (False, 1800)
    with pytest.raises(GptkitError, match="dist.strategy must be auto, ddp, fsdp or none"):
        load_config("shakespeare-char", ["dist.strategy=zero3"])
    with pytest.raises(GptkitError, match="dist.cpu_offload is an FSDP option"):
        load_config("shakespeare-char", ["dist.cpu_offload=true"])
    with pytest.raises(GptkitError, match="dist.timeout_s must be > 0"):
        load_config("shakespeare-char", ["dist.timeout_s=0"])


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "1e400"])
def test_non_finite_numbers_are_refused(value):
    for key in ("train.lr", "train.grad_clip", "dist.timeout_s", "sample.temperature"):
        with pytest.raises(GptkitError, match=f"{key} must be a finite number"):
            load_config("shakespeare-char", [f"{key}={value}"])
    with pytest.raises(GptkitError, match="train.max_steps must be int"):
        load_config("shakespeare-char", [f"train.max_steps={value}"])


def test_non_finite_numbers_in_a_recipe_are_refused(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: .nan\n")
    with pytest.raises(GptkitError, match="train.lr must be a finite number"):
        load_config(str(recipe))
    recipe.write_text("train:\n  max_steps: .inf\n")
    with pytest.raises(GptkitError, match="train.max_steps must be int"):
        load_config(str(recipe))


def test_integers_stay_exact():
    big = 9007199254740993  # 2**53 + 1: a float would make it ...992
    cfg = load_config("shakespeare-char", [f"train.max_steps={big}", "data.shard_tokens=1_000",
                                           "train.eval_interval=1e3", "train.seed=4294967295"])
    assert cfg.train.max_steps == big and cfg.data.shard_tokens == 1000
    assert cfg.train.eval_interval == 1000 and cfg.train.seed == 2**32 - 1
    with pytest.raises(GptkitError, match="train.max_steps must be int"):
        load_config("shakespeare-char", ["train.max_steps=1e999"])
    # a seed numpy cannot take is refused, not changed
    for seed in (big, -1):
        with pytest.raises(GptkitError, match=r"train.seed must be in \[0, 2\*\*32 - 1\]"):
            load_config("shakespeare-char", [f"train.seed={seed}"])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"model: [unclosed\n", "not valid YAML (expected ',' or ']'"),
        (b"- 1\n- 2\n", "must be a mapping of settings, not list"),
        (b"\x00\x01\x02", "not valid YAML"),
        (b"\xff\xfe\x00model", "not UTF-8 text (byte 0)"),
        (b"1: 2\n", "setting names must be text"),
        (b"model:\n  n_layer: zero\n", "model.n_layer must be int"),
    ],
)
def test_damaged_run_config_names_the_file(tmp_path: Path, content: bytes, fragment: str):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(GptkitError) as info:
        read_config(path)
    assert fragment in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_recipe_that_is_not_utf8(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(GptkitError, match="is not UTF-8 text"):
        load_recipe(str(recipe))


# --- settings that would do nothing are refused (issue 17, item 6) ----------------------------
def _moved(value, annotation):
    """A value other than `value` for a field of type `annotation` (no validation needed)."""
    import typing

    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.125
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, list):
        return [*value, "x"]
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(inner[-1]) is list:  # e.g. sample.bad_words_ids: [[1]]
        return [[1]]
    if typing.get_origin(inner[-1]) is dict:  # sample.logit_bias: {token id: bias}
        return {1: 2.0}
    if typing.get_origin(inner[-1]) is typing.Literal:  # e.g. model.context_extension
        return typing.get_args(inner[-1])[0]
    return {int: 3, str: "x", float: 0.5, bool: True}[inner[-1]]


def test_every_setting_declares_the_runs_that_read_it():
    from gptkit.config import SECTIONS, field_names
    from gptkit.config.usage import RUN_KINDS, USED_BY

    fields = {f"{name}.{key}" for name, cls in SECTIONS.items() for key in field_names(cls)}
    assert fields == set(USED_BY), "a new setting must say in USED_BY which runs read it"
    assert all(kinds and set(kinds) <= set(RUN_KINDS) for kinds in USED_BY.values())


def test_a_setting_a_run_does_not_read_is_refused_with_where_it_applies():
    import typing

    from gptkit.config import SECTIONS, field_names
    from gptkit.config.usage import KIND_NAMES, RUN_KINDS, USED_BY, check_used

    refused = 0
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for field in field_names(cls):
            key = f"{name}.{field}"
            for kind in set(RUN_KINDS) - set(USED_BY[key]):
                section = getattr(RunConfig(), name)
                moved = {field: _moved(getattr(section, field), hints[field])}
                # unvalidated copies: check_used must refuse the value whatever it is
                cfg = RunConfig().model_copy(update={name: section.model_copy(update=moved)})
                with pytest.raises(GptkitError, match=rf"^{key}=.* does nothing in") as caught:
                    check_used(cfg, {kind})
                message = str(caught.value)
                assert "\n" not in message and "it applies to" in message
                assert all(KIND_NAMES[k] in message for k in USED_BY[key])
                refused += 1
            if not set(RUN_KINDS) - set(USED_BY[key]):
                check_used(RunConfig(), set(RUN_KINDS))  # defaults are never refused
    assert refused > 50


def test_every_shipped_recipe_sets_only_what_its_runs_read():
    from gptkit.config.usage import check_used, run_kinds

    for name in recipe_names():
        cfg = load_config(name)
        if name.endswith("student"):  # gptkit distill --teacher RUN --student-recipe ...
            cfg = cfg.updated(distill={"teacher": "runs/teacher"})
        check_used(cfg, run_kinds(cfg, classify=name in ("sentiment", "ner")))


def test_settings_read_only_under_another_setting():
    from gptkit.config.usage import check_used

    cfg = load_config("shakespeare-char", ["finetune.lora_alpha=32"])
    with pytest.raises(GptkitError, match="finetune.lora_alpha=32.0 does nothing here; it "
                       "applies with finetune.lora_r > 0"):
        check_used(cfg, {"train"})
    cfg = load_config("shakespeare-char", ["train.cooldown_fraction=0.5"])
    with pytest.raises(GptkitError, match="train.schedule=wsd"):
        check_used(cfg, {"train"})
    check_used(load_config("shakespeare-char", ["finetune.lora_r=4", "finetune.lora_alpha=32"]),
               {"train"})


@pytest.mark.parametrize(("argv", "match"), [
    (["train", "--set", "data.augment=[word_swap=0.1]"],
     "data.augment=['word_swap=0.1'] does nothing in pre-training on text (gptkit train); it "
     "applies to supervised fine-tuning"),
    (["train", "--set", "data.packing=true"], "data.packing=True does nothing in pre-training"),
    (["train", "--set", "classify.task=token"], "classify.task=token does nothing in"),
    (["train", "--set", "distill.alpha=0.9"], "distill.alpha=0.9 does nothing in"),
])
def test_train_refuses_settings_it_would_ignore(capsys, tmp_path, argv, match):
    from tests.test_cli import run_cli

    code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 2 and err.startswith("gptkit: error: ") and err.count("\n") == 1
    assert match in err
    assert not (tmp_path / "run").exists()


# --- which split picks the checkpoint, which is reported (issue 17, item 6) --------------------
def test_wikitext2_recipe_never_selects_on_the_split_it_reports(data_dir, tmp_path):
    import shutil

    from gptkit.data.sources import resolve_protocol

    cfg = load_config("wikitext2")
    assert cfg.data.protocol == "auto"
    for protocol in ("published", "offline"):
        data, line = resolve_protocol(cfg.data.updated(protocol=protocol))
        assert data.test_split == "test" and data.eval_split not in ("test", data.train_split)
        assert line.startswith(f"data protocol: {protocol} ")
        build_config({"data": data.model_dump()})  # the resolved splits pass the overlap checks
    # here there is no wiki.train.tokens in the data root and downloads are off: offline
    data, line = resolve_protocol(cfg.data)
    assert (data.protocol, data.train_split, data.eval_split, data.test_split) == (
        "offline", "valid-head", "valid-tail", "test")
    assert "wiki.train.tokens" in line and "report test" in line
    # with the train split in the data root, auto is the published protocol
    shutil.copytree(data_dir / "wikitext-2", tmp_path / "wikitext-2")
    shutil.copy(data_dir / "wikitext-2" / "wiki.valid.tokens",
                tmp_path / "wikitext-2" / "wiki.train.tokens")
    data, _ = resolve_protocol(cfg.data, tmp_path)
    assert (data.protocol, data.train_split, data.eval_split, data.test_split) == (
        "published", "train", "valid", "test")


@pytest.mark.parametrize(("sets", "match"), [
    (["data.eval_split=val", "data.test_split=val"], "share text"),
    (["data.train_split=val"], "data.train_split (val) and data.eval_split (val) share text"),
    (["data.source=wikitext2", "data.eval_split=valid", "data.test_split=valid-tail"],
     "share text"),
    (["data.source=wikitext2", "data.protocol=offline", "data.eval_split=test"],
     "contradicts data.protocol=offline"),
    (["data.protocol=offline"], "applies to WikiText sources"),
    (["data.val_fraction=0.2"], "does nothing for tinyshakespeare"),
    (["data.split_by=fraction"], "has fixed splits"),
])
def test_split_settings_that_cannot_be_honest_are_refused(sets, match):
    import re

    with pytest.raises(GptkitError, match=re.escape(match)):
        load_config("shakespeare-char", sets)


# --- typed, frozen settings on pydantic (issue 18, item 5) ------------------------------------
FIXTURE = Path(__file__).parent / "fixtures" / "config-v0.yaml"


def test_a_config_written_before_pydantic_loads_to_the_same_values(tmp_path: Path):
    """tests/fixtures/config-v0.yaml is a run's config.yaml from the dataclass config."""
    import yaml

    saved = yaml.safe_load(FIXTURE.read_text(encoding="utf-8"))
    cfg = read_config(FIXTURE)
    # the same values; sample.bad_words_ids (token ids, as Hugging Face's) and OpenAI's
    # penalties and logit bias came later, at their neutral values
    dumped = cfg.model_dump()
    later = {"bad_words_ids": None, "frequency_penalty": 0.0, "presence_penalty": 0.0,
             "logit_bias": None}
    assert {key: dumped["sample"].pop(key) for key in later} == later
    assert dumped["train"].pop("epochs") is None  # train.epochs came later too
    # so did RoPE's base and position scale and the context extension (issue 22)
    later_model = {"rope_base": 10000.0, "rope_scale": 1.0, "context_extension": None}
    assert {key: dumped["model"].pop(key) for key in later_model} == later_model
    schedules = {"plateau_factor": 0.1, "plateau_patience": 10, "plateau_threshold": 1e-4,
                 "plateau_threshold_mode": "rel", "plateau_cooldown": 0, "step_size": 1000,
                 "step_gamma": 0.1, "exp_gamma": 0.999}  # the schedules of issue 22
    assert {key: dumped["train"].pop(key) for key in schedules} == schedules
    hf = {"hf_config": None, "hf_data_files": [], "hf_streaming": False}  # hf: sources, too
    assert {key: dumped["data"].pop(key) for key in hf} == hf
    # and the long-input settings (issue 22), at today's behaviour
    long_inputs = {"long_inputs": "truncate", "chunk_stride": None, "chunk_aggregate": "mean"}
    assert {key: dumped["classify"].pop(key) for key in long_inputs} == long_inputs
    assert dumped["finetune"].pop("truncation_side") == "right"
    warmup = {"seq_warmup_steps": 0, "seq_warmup_start": 8}  # sequence-length warmup, issue 22
    assert {key: dumped["train"].pop(key) for key in warmup} == warmup
    assert dumped == saved
    assert (cfg.train.min_lr, cfg.train.min_lr_ratio, cfg.train.floor_lr) == (1e-5, None, 1e-5)
    save_config(cfg, tmp_path / "config.yaml")  # and is written back line for line, plus it
    written = (tmp_path / "config.yaml").read_text(encoding="utf-8").splitlines()
    new_lines = {f"  {key}: {'null' if value is None else value}"
                 for key, value in {**later, **later_model}.items()}
    new_lines.add("  epochs: null")
    new_lines |= {"  " + yaml.safe_dump({key: value}).strip() for key, value in schedules.items()}
    new_lines |= {"  " + yaml.safe_dump({key: value}).strip() for key, value in hf.items()}
    new_lines |= {"  long_inputs: truncate", "  chunk_stride: null", "  chunk_aggregate: mean",
                  "  truncation_side: right"}
    new_lines |= {"  " + yaml.safe_dump({key: value}).strip() for key, value in warmup.items()}
    assert [line for line in written if line not in new_lines] == FIXTURE.read_text(
        encoding="utf-8").splitlines()
    # one saved before train.min_lr_ratio existed keeps its absolute floor
    del saved["train"]["min_lr_ratio"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved, sort_keys=False), encoding="utf-8")
    assert read_config(tmp_path / "old.yaml").train.floor_lr == 1e-5


def test_settings_are_frozen_and_changed_copies_are_validated():
    from pydantic import ValidationError

    cfg = load_config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.model = cfg.model  # type: ignore[misc]
    changed = cfg.updated(train={"lr": "3e-4"}, name="other")
    assert (changed.train.lr, changed.name, cfg.train.lr, cfg.name) == (
        3e-4, "other", 1e-3, "shakespeare-char")
    assert changed.model == cfg.model and changed.sample == cfg.sample
    with pytest.raises(GptkitError, match=r"^train.lr must be > 0 \(got -1.0\)$"):
        cfg.updated(train={"lr": -1})
    with pytest.raises(GptkitError, match="eval.stride .* must not exceed model.block_size"):
        cfg.updated(eval={"stride": 65})  # a check across sections runs on the copy too
    assert cfg.model.updated(n_layer=2).n_layer == 2


def test_building_a_section_directly_is_checked_and_names_the_key():
    from gptkit.config import DataConfig, ModelConfig, TrainConfig

    with pytest.raises(GptkitError, match=r"^model.n_layer must be >= 1 \(got 0\)$"):
        ModelConfig(n_layer=0)
    with pytest.raises(GptkitError, match=r"^train.schedule must be cosine, linear, constant, "
                       r"wsd, plateau, step or exponential \(got 'zigzag'\)$"):
        TrainConfig(schedule="zigzag")
    with pytest.raises(GptkitError, match="^unknown setting 'data.sauce'$"):
        DataConfig(sauce="x")


@pytest.mark.parametrize(("override", "value"), [
    ("model.bias=yes", True), ("model.bias=OFF", False), ("model.bias=1", True),
    ("model.bias= false ", False), ("train.max_steps=1_000", 1000), ("train.max_steps=2e3", 2000),
    ("train.lr=1", 1.0), ("train.batch_tokens=none", None), ("train.batch_tokens=~", None),
    ("data.augment=word_swap=0.1", ["word_swap=0.1"]),
    ("data.augment=[word_swap=0.1, char_noise=0.05]", ["word_swap=0.1", "char_noise=0.05"]),
    ("finetune.lora_targets=[]", []), ("sample.top_k=1e2", 100), ("sample.seed=null", None),
    ("sample.early_stopping=never", "never"), ("sample.early_stopping=on", True),
    ("name=123", "123"),
])
def test_command_line_values_convert_as_they_always_did(override, value):
    key, _ = override.split("=", 1)
    cfg = load_config("shakespeare-char", [override])
    got = cfg.name if key == "name" else getattr(getattr(cfg, key.split(".")[0]),
                                                 key.split(".")[1])
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("yaml_text", "fragment"), [
    ("model:\n  bias: 1\n", "model.bias must be bool, got 1"),
    ("train:\n  max_steps: true\n", "train.max_steps must be int, got True"),
    ("train:\n  lr: false\n", "train.lr must be float, got False"),
    ("model:\n  n_layer: 2.5\n", "model.n_layer must be int, got 2.5"),
    ("data:\n  augment: [word_swap=0.1, [1]]\n", "data.augment[1] must be str"),
    ("data:\n  source: {a: 1}\n", "data.source must be str"),
    ("train: 3\n", "section 'train' must be a mapping"),
    ("sample:\n  top_k: many\n", "sample.top_k must be int, got 'many'"),
])
def test_recipe_values_of_the_wrong_type_are_refused(tmp_path: Path, yaml_text, fragment):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml_text)
    with pytest.raises(GptkitError) as info:
        load_config(str(recipe))
    assert fragment in str(info.value) and "\n" not in str(info.value)
    # a whole number written as a float in YAML is an int, as before
    recipe.write_text("model:\n  n_layer: 2.0\n")
    assert load_config(str(recipe)).model.n_layer == 2


def test_epochs_is_the_other_budget_and_exactly_one_is_set():
    """train.epochs alone leaves max_steps null; over a recipe's max_steps it is an error
    naming the fix; neither is an error too."""
    alone = build_config({"train": {"epochs": 2}})
    assert (alone.train.epochs, alone.train.max_steps) == (2.0, None)
    assert build_config({}).train.max_steps == 2000  # no epochs: the default budget
    with pytest.raises(GptkitError, match=r"^train.epochs=2 and train.max_steps=2000 both set "
                       r".*--set train.max_steps=null") as caught:
        load_config("shakespeare-char", ["train.epochs=2"])
    assert "\n" not in str(caught.value)
    cfg = load_config("shakespeare-char", ["train.epochs=2", "train.max_steps=null"])
    assert (cfg.train.epochs, cfg.train.max_steps) == (2.0, None)
    with pytest.raises(GptkitError, match="train.max_steps and train.epochs are both null"):
        build_config({"train": {"max_steps": "null"}})
    for bad in ("0", "-1", "two"):
        with pytest.raises(GptkitError, match="^train.epochs"):
            build_config({"train": {"epochs": bad}})
    with pytest.raises(GptkitError, match="train.epochs is not yet turned into steps"):
        _ = alone.train.steps


def test_intervals_are_steps_or_epochs():
    t = build_config({"train": {"eval_interval": "0.5 epochs", "checkpoint_interval": "2epoch",
                                "log_interval": "1e2"}}).train
    assert (t.eval_interval, t.checkpoint_interval, t.log_interval) == (
        "0.5 epochs", "2 epochs", 100)
    for bad in ("0", "0 epochs", "-1 epochs", "0.5", "soon", "inf epochs"):
        with pytest.raises(GptkitError, match=r"^train.eval_interval must be") as caught:
            build_config({"train": {"eval_interval": bad}})
        assert "\n" not in str(caught.value)
    # saved and read back unchanged (config.yaml of a run not yet settled)
    assert build_config(build_config({"train": {"eval_interval": "0.5 epochs"}})
                        .model_dump()).train.eval_interval == "0.5 epochs"
