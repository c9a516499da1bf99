"""Each named choice is declared once (gptkit.config.choices): the settings, the command line
and the code that acts on a choice all take it from there (issue 18, item 5)."""

import argparse
from typing import Any

import pytest

from gptkit.config import (
    ClassifyConfig,
    DataConfig,
    DistConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from gptkit.config.choices import (
    ClassifyTask,
    DataFormat,
    ExportFormat,
    InferencePrecision,
    MlpKind,
    NormKind,
    OptimizerName,
    Pooling,
    PosEmbedding,
    Precision,
    PruneMethod,
    Quantization,
    ScheduleName,
    SplitBy,
    SplitProtocol,
    Strategy,
    SweepPruner,
    SweepSampler,
    ThresholdMode,
    TokenizerKind,
    WeightDtype,
    names,
    one_of,
)
from gptkit.errors import GptkitError

SETTINGS: list[tuple[type, str, Any]] = [
    (ModelConfig, "pos_embedding", PosEmbedding), (ModelConfig, "norm", NormKind),
    (ModelConfig, "mlp", MlpKind), (DataConfig, "tokenizer", TokenizerKind),
    (DataConfig, "format", DataFormat), (DataConfig, "protocol", SplitProtocol),
    (DataConfig, "split_by", SplitBy), (TrainConfig, "optimizer", OptimizerName),
    (TrainConfig, "schedule", ScheduleName), (TrainConfig, "precision", Precision),
    (DistConfig, "strategy", Strategy), (ClassifyConfig, "task", ClassifyTask),
    (ClassifyConfig, "pooling", Pooling), (TrainConfig, "plateau_threshold_mode", ThresholdMode),
]


@pytest.mark.parametrize(("section", "key", "choice"), SETTINGS)
def test_a_setting_takes_exactly_its_declared_choices(section, key, choice):
    assert section.model_fields[key].annotation == choice
    where = f"{section.section}.{key}"
    with pytest.raises(GptkitError) as info:
        load_config("shakespeare-char", [f"{where}=nope"])
    assert str(info.value) == f"{where} must be {one_of(choice)} (got 'nope')"


def test_the_runtime_registries_are_the_declared_choices():
    from gptkit import compress
    from gptkit.finetune import heads
    from gptkit.rundir import QUANTIZATIONS
    from gptkit.sweep.study import PRUNERS, SAMPLERS
    from gptkit.train.optim import OPTIMIZERS
    from gptkit.train.schedule import SCHEDULES

    assert tuple(OPTIMIZERS) == names(OptimizerName)
    assert tuple(SCHEDULES) == names(ScheduleName)
    assert tuple(heads.POOLERS) == names(Pooling) and names(ClassifyTask) == heads.TASKS
    assert tuple(compress.PRUNERS) == names(PruneMethod) == compress.PRUNE_METHODS
    assert names(Quantization) == QUANTIZATIONS
    assert names(Precision) == (*names(InferencePrecision), "fp16")
    assert names(InferencePrecision) == ("auto", *names(WeightDtype))
    assert tuple(SAMPLERS) == names(SweepSampler) and tuple(PRUNERS) == names(SweepPruner)


def _options(command: str) -> dict[str, argparse.Action]:
    from gptkit.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = commands.choices[command]
    return {flag: action for action in sub._actions for flag in action.option_strings}


@pytest.mark.parametrize(("command", "flag", "choice"), [
    ("prune", "--method", PruneMethod), ("sample", "--precision", Precision),
    ("sample", "--quantize", Quantization), ("eval", "--quantize", Quantization),
    ("export", "--quantize", Quantization), ("info", "--precision", WeightDtype),
    ("export", "--format", ExportFormat), ("sweep", "--sampler", SweepSampler),
    ("sweep", "--pruner", SweepPruner),
])
def test_command_line_choices_are_the_declared_ones(capsys, command, flag, choice):
    assert tuple(_options(command)[flag].choices) == names(choice)
    from gptkit.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "{" + ",".join(names(choice)) + "}" in capsys.readouterr().out


def test_heads_refuse_what_is_not_declared():
    from gptkit.finetune.heads import GPTClassifier

    config = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=16)
    for task in names(ClassifyTask):
        for pooling in names(Pooling):
            assert GPTClassifier(config, 2, task, pooling).task == task
    with pytest.raises(GptkitError, match=r"classify.task must be sequence or token \(got 'x'\)"):
        GPTClassifier(config, 2, "x")
    with pytest.raises(GptkitError, match=r"classify.pooling must be last or mean"):
        GPTClassifier(config, 2, "sequence", "max")
