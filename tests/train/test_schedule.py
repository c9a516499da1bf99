from __future__ import annotations

import math

import pytest

from gptkit.config import TrainConfig
from gptkit.errors import GptkitError
from gptkit.train.schedule import lr_at

LR, MIN_LR = 1e-3, 1e-4


def cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        lr=LR, min_lr=MIN_LR, warmup_steps=10, max_steps=110, schedule="cosine"
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_is_linear_from_above_zero_to_lr(schedule: str) -> None:
    c = cfg(schedule=schedule)
    assert lr_at(0, c) == pytest.approx(LR / 11)
    assert lr_at(4, c) == pytest.approx(LR * 5 / 11)
    assert lr_at(9, c) == pytest.approx(LR * 10 / 11)
    assert lr_at(10, c) == pytest.approx(LR)  # warmup ends at the full rate


def test_cosine_midpoint_end_and_after() -> None:
    c = cfg()
    assert lr_at(60, c) == pytest.approx((LR + MIN_LR) / 2)
    assert lr_at(35, c) == pytest.approx(MIN_LR + 0.5 * (1 + math.cos(math.pi / 4)) * (LR - MIN_LR))
    assert lr_at(110, c) == pytest.approx(MIN_LR)
    assert lr_at(111, c) == pytest.approx(MIN_LR)
    assert lr_at(10_000, c) == pytest.approx(MIN_LR)


def test_cosine_never_increases_after_warmup() -> None:
    c = cfg()
    rates = [lr_at(s, c) for s in range(10, 200)]
    assert all(a >= b for a, b in zip(rates[:-1], rates[1:], strict=True))


def test_decay_steps_overrides_max_steps() -> None:
    c = cfg(decay_steps=60)
    assert lr_at(35, c) == pytest.approx((LR + MIN_LR) / 2)
    assert lr_at(60, c) == pytest.approx(MIN_LR)
    assert lr_at(100, c) == pytest.approx(MIN_LR)


def test_linear() -> None:
    c = cfg(schedule="linear")
    assert lr_at(10, c) == pytest.approx(LR)
    assert lr_at(35, c) == pytest.approx(LR - 0.25 * (LR - MIN_LR))
    assert lr_at(60, c) == pytest.approx((LR + MIN_LR) / 2)
    assert lr_at(110, c) == pytest.approx(MIN_LR)
    assert lr_at(500, c) == pytest.approx(MIN_LR)


def test_constant_after_warmup() -> None:
    c = cfg(schedule="constant")
    assert [lr_at(s, c) for s in (10, 60, 110, 5000)] == [LR] * 4


def test_no_warmup_starts_at_lr() -> None:
    assert lr_at(0, cfg(warmup_steps=0)) == pytest.approx(LR)


def test_decay_ending_before_warmup_gives_min_lr() -> None:
    c = cfg(warmup_steps=10, decay_steps=5)
    assert lr_at(9, c) == pytest.approx(LR * 10 / 11)
    assert lr_at(10, c) == pytest.approx(MIN_LR)
    assert lr_at(0, cfg(warmup_steps=0, max_steps=0)) == pytest.approx(MIN_LR)


def test_wsd_warms_up_holds_then_cools_down_linearly() -> None:
    c = cfg(schedule="wsd", warmup_steps=10, max_steps=110, cooldown_fraction=0.2)
    assert lr_at(0, c) == pytest.approx(LR / 11)  # the same warmup as every schedule
    assert [lr_at(s, c) for s in (10, 50, 88)] == [LR] * 3  # stable until step 110 - 22
    assert lr_at(99, c) == pytest.approx((LR + MIN_LR) / 2)
    assert lr_at(110, c) == pytest.approx(MIN_LR)
    assert lr_at(500, c) == pytest.approx(MIN_LR)
    rates = [lr_at(s, c) for s in range(10, 120)]
    assert all(a >= b for a, b in zip(rates[:-1], rates[1:], strict=True))
    steps = [b - a for a, b in zip(rates[78:100], rates[79:101], strict=True)]
    assert steps == pytest.approx([steps[0]] * len(steps))  # a straight line down


def test_wsd_cooldown_fraction_edges_and_decay_steps() -> None:
    assert lr_at(100, cfg(schedule="wsd", cooldown_fraction=1.0)) == pytest.approx(
        lr_at(100, cfg(schedule="linear")))  # all decay: linear after warmup
    none = cfg(schedule="wsd", cooldown_fraction=0.0)
    assert lr_at(109, none) == LR and lr_at(110, none) == pytest.approx(MIN_LR)
    early = cfg(schedule="wsd", decay_steps=60, cooldown_fraction=0.5)  # cools 30 -> 60
    assert lr_at(30, early) == LR and lr_at(45, early) == pytest.approx((LR + MIN_LR) / 2)
    assert lr_at(80, early) == pytest.approx(MIN_LR)
    short = cfg(schedule="wsd", warmup_steps=10, max_steps=12, cooldown_fraction=0.5)
    assert lr_at(10, short) == LR  # a cooldown reaching into warmup starts when warmup ends
    assert lr_at(11, short) == pytest.approx((LR + MIN_LR) / 2)


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(GptkitError, match="'step'"):
        lr_at(0, cfg(schedule="step", warmup_steps=0))


def test_min_lr_follows_a_lowered_lr_as_a_ratio() -> None:
    """docs/interop.md's `--recipe wikitext2 --set train.lr=3e-5` needs no word about min_lr."""
    from gptkit.config import load_config

    t = load_config("wikitext2", ["train.lr=3e-5"]).train
    assert t.min_lr is None and t.floor_lr == pytest.approx(3e-6)
    assert lr_at(t.max_steps, t) == pytest.approx(3e-6)
    t = load_config("wikitext2", ["train.lr=3e-5", "train.min_lr_ratio=0.5"]).train
    assert lr_at(t.max_steps, t) == pytest.approx(1.5e-5)
    assert TrainConfig(lr=2e-3).floor_lr == pytest.approx(2e-4)  # neither set: ratio 0.1


def test_an_absolute_min_lr_of_an_older_run_still_loads(tmp_path) -> None:
    import yaml

    from gptkit.config import load_config, read_config, save_config

    path = tmp_path / "config.yaml"
    save_config(load_config(), path)
    raw = yaml.safe_load(path.read_text())
    del raw["train"]["min_lr_ratio"]  # as runs saved before it existed
    raw["train"]["min_lr"] = 2e-4
    path.write_text(yaml.safe_dump(raw))
    t = read_config(path).train
    assert t.floor_lr == 2e-4 and lr_at(t.max_steps, t) == pytest.approx(2e-4)
    with pytest.raises(GptkitError, match="both set"):
        load_config("shakespeare-char", ["train.min_lr=1e-5"])  # the recipe sets the ratio
    assert load_config("shakespeare-char", ["train.min_lr=1e-5", "train.min_lr_ratio=null"]
                       ).train.floor_lr == 1e-5
    with pytest.raises(GptkitError, match=r"train.min_lr_ratio must be in \[0, 1\]"):
        load_config("shakespeare-char", ["train.min_lr_ratio=2"])
