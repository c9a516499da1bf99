from __future__ import annotations

import json
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
    with pytest.raises(GptkitError, match="'zigzag'"):
        lr_at(0, cfg(schedule="zigzag", warmup_steps=0))


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


# --- step, exponential ----------------------------------------------------------------------
def test_step_and_exponential_start_from_lr_after_warmup_and_stop_at_the_floor() -> None:
    step = cfg(schedule="step", step_size=20, step_gamma=0.5, min_lr=LR / 5)
    assert lr_at(9, step) == pytest.approx(LR * 10 / 11)  # the same warmup as every schedule
    assert [lr_at(s, step) for s in (10, 29)] == [LR, LR]
    assert [lr_at(s, step) for s in (30, 49, 50, 70)] == [LR / 2, LR / 2, LR / 4, LR / 5]
    exp = cfg(schedule="exponential", exp_gamma=0.9, min_lr=LR / 5)
    assert lr_at(10, exp) == LR and lr_at(12, exp) == pytest.approx(LR * 0.81)
    assert lr_at(25, exp) == pytest.approx(LR * 0.9 ** 15)
    assert lr_at(10_000, exp) == LR / 5  # not below the floor (train.min_lr=0: no floor)
    assert lr_at(1000, cfg(schedule="exponential", exp_gamma=0.9, min_lr=0.0)) < LR * 1e-40


@pytest.mark.parametrize("name", ["step", "exponential"])
def test_step_and_exponential_follow_pytorch_without_a_floor(name: str) -> None:
    import torch

    t = cfg(schedule=name, warmup_steps=0, min_lr=0.0, step_size=7, step_gamma=0.3,
            exp_gamma=0.95)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = (torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.3) if name == "step"
             else torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95))
    for s in range(40):
        assert lr_at(s, t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), s
        opt.step()
        sched.step()


# --- plateau ---------------------------------------------------------------------------------
LOSSES = [5.0, 4.0, 4.0, 3.9999, 4.1, 4.0, 3.5, 3.5, 3.5, 3.5, 3.49999, 3.6, 3.7, 2.0, 2.0,
          2.0, 2.0, 2.0, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9]


@pytest.mark.parametrize(("mode", "threshold", "patience", "cooldown", "min_lr"), [
    ("rel", 1e-4, 1, 0, 0.0), ("rel", 1e-4, 0, 0, 0.0), ("abs", 0.01, 1, 0, 0.0),
    ("abs", 0.0, 2, 2, 0.0), ("rel", 0.0, 0, 1, LR / 50),  # the floor is reached
    ("rel", 1e-4, 0, 0, LR - 5e-9),  # a reduction by eps or less is skipped, as PyTorch does
])
def test_plateau_takes_pytorchs_rates_step_by_step(mode, threshold, patience, cooldown,
                                                   min_lr) -> None:
    import torch

    from gptkit.train.schedule import Schedule

    t = cfg(schedule="plateau", warmup_steps=0, eval_interval=1, min_lr=min_lr,
            plateau_factor=0.5, plateau_patience=patience, plateau_threshold=threshold,
            plateau_threshold_mode=mode, plateau_cooldown=cooldown)
    ours = Schedule(t)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=patience, threshold=threshold,
        threshold_mode=mode, cooldown=cooldown, min_lr=min_lr)
    rates = []
    for step, loss in enumerate(LOSSES):
        ours.observe(step, loss)
        theirs.step(loss)
        assert ours.lr(step) == opt.param_groups[0]["lr"], step  # exactly, not approximately
        rates.append(ours.lr(step))
    skipped = min_lr == LR - 5e-9
    assert (len(set(rates)) > 1) != skipped  # the sequence reduces the rate, but by eps


def test_plateau_counts_only_evaluations_on_the_interval_after_warmup() -> None:
    from gptkit.train.schedule import Schedule

    s = Schedule(cfg(schedule="plateau", warmup_steps=10, eval_interval=5, plateau_patience=0))
    for step in (0, 5):  # during warmup: not counted
        assert s.observe(step, 3.0) is None
    assert s.lr(9) == pytest.approx(LR * 10 / 11) and s.lr(10) == LR
    assert s.observe(10, 3.0) is None  # the first counted evaluation sets the best
    assert s.observe(12, 3.0) is None  # where an interrupted run stops: not on the interval
    assert s.observe(15, 3.0) == LR / 10 and s.lr(15) == LR / 10  # patience 0: reduce at once
    assert s.lr(9) == pytest.approx(LR * 10 / 11)  # warmup is still warmup


def test_plateau_state_round_trips_and_a_checkpoint_without_it_starts_afresh() -> None:
    from gptkit.train.schedule import Schedule

    t = cfg(schedule="plateau", warmup_steps=0, eval_interval=1, plateau_patience=1,
            plateau_cooldown=3)
    s = Schedule(t)
    for step, loss in enumerate([2.0, 2.5, 2.5, 2.4]):
        s.observe(step, loss)
    state = s.state_dict()
    assert state == {"base_lr": LR, "lr": LR / 10, "best": 2.0, "bad_evals": 0,
                     "cooldown_counter": 2}
    again = Schedule(t)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.state_dict() == state
    fresh = Schedule(t)
    fresh.load_state_dict({})  # a checkpoint written before plateau existed
    assert fresh.state_dict()["best"] is None and fresh.lr(5) == LR
    lower = Schedule(cfg(schedule="plateau", lr=LR / 2, min_lr=MIN_LR / 2))
    lower.load_state_dict(state)  # resumed with a lower train.lr: the reduction carries over
    assert lower.lr(500) == pytest.approx(LR / 20)
    assert Schedule(cfg()).state_dict() == {}  # a schedule without state saves none


# --- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "where"), [
    ("train.plateau_patience=3", "train.schedule=plateau"),
    ("train.plateau_threshold_mode=abs", "train.schedule=plateau"),
    ("train.step_size=50", "train.schedule=step"),
    ("train.exp_gamma=0.99", "train.schedule=exponential"),
])
def test_a_schedule_setting_without_its_schedule_is_refused(setting: str, where: str) -> None:
    from gptkit.config import load_config
    from gptkit.config.usage import check_used

    with pytest.raises(GptkitError, match=f"does nothing here; it applies with {where}"):
        check_used(load_config("shakespeare-char", [setting]), {"train"})
    name = where.split("=")[1]
    check_used(load_config("shakespeare-char", [setting, f"train.schedule={name}"]), {"train"})


@pytest.mark.parametrize("name", ["plateau", "step", "exponential", "constant"])
def test_decay_steps_is_refused_where_no_decay_reads_it(name: str) -> None:
    from gptkit.config import load_config
    from gptkit.config.usage import check_used

    cfg_ = load_config("shakespeare-char", [f"train.schedule={name}", "train.decay_steps=500"])
    with pytest.raises(GptkitError, match="train.decay_steps=500 does nothing here; it applies "
                       "with train.schedule cosine, linear or wsd"):
        check_used(cfg_, {"train"})


@pytest.mark.parametrize(("setting", "message"), [
    ("plateau_factor=1", r"train.plateau_factor must be in \(0, 1\) \(got 1.0\)"),
    ("plateau_factor=0", r"train.plateau_factor must be in \(0, 1\)"),
    ("plateau_patience=-1", "train.plateau_patience must be >= 0"),
    ("plateau_threshold=-0.1", "train.plateau_threshold must be >= 0"),
    ("plateau_threshold_mode=max", "train.plateau_threshold_mode must be rel or abs"),
    ("plateau_cooldown=-2", "train.plateau_cooldown must be >= 0"),
    ("step_size=0", "train.step_size must be >= 1"),
    ("step_gamma=0", r"train.step_gamma must be in \(0, 1\]"),
    ("exp_gamma=1.5", r"train.exp_gamma must be in \(0, 1\]"),
])
def test_bad_schedule_values_are_one_line_errors(setting: str, message: str) -> None:
    from gptkit.config import load_config

    with pytest.raises(GptkitError, match=f"^{message}") as info:
        load_config("shakespeare-char", [f"train.{setting}"])
    assert "\n" not in str(info.value)
