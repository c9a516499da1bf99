from __future__ import annotations

import math

import pytest
import torch

from gptkit.errors import GptkitError
from gptkit.finetune.distill import distillation_loss
from tests.conftest import TINY
from tests.test_cli import run_cli


def _by_hand(student, teacher, targets, alpha, t, vocab):
    """Per position: KL(softmax(teacher/t) || softmax(student/t)) and -log softmax(student)."""
    kls, ces = [], []
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), targets.tolist(), strict=True):
        if y == -100:
            continue
        s_row, t_row = s_row[:vocab], t_row[:vocab]

        def softmax(row, temp):
            exps = [math.exp(v / temp) for v in row]
            return [e / sum(exps) for e in exps]

        p, q = softmax(t_row, t), softmax(s_row, t)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
        ces.append(-math.log(softmax(s_row, 1.0)[y]))
    return alpha * sum(kls) / len(kls) * t * t + (1 - alpha) * sum(ces) / len(ces)


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 2.0), (0.0, 1.0), (1.0, 4.0), (0.3, 0.7)])
def test_loss_equals_a_hand_computation(alpha, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 6, 9), torch.randn(1, 6, 11)  # teacher's table is padded
    targets = torch.tensor([[3, -100, 0, 6, -100, 2]])
    got = distillation_loss(student, teacher, targets, alpha=alpha, temperature=temperature,
                            vocab_size=7)
    want = _by_hand(student[0], teacher[0], targets[0], alpha, temperature, 7)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_a_student_equal_to_its_teacher_has_only_the_hard_loss():
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    loss = distillation_loss(logits, logits.clone(), targets, alpha=1.0, temperature=3.0,
                             vocab_size=7)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def _tiny(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


def test_distill_cli_trains_a_student_with_the_teachers_tokenizer(tmp_path, capsys, data_dir):
    teacher = tmp_path / "teacher"
    assert run_cli(capsys, "train", "--out", str(teacher), "--no-progress", *_tiny())[0] == 0
    code, out, err = run_cli(
        capsys, "distill", "--teacher", str(teacher), "--student-recipe",
        "shakespeare-char-student", "--out", str(tmp_path / "student"), "--no-progress",
        *_tiny("model.n_embd=16", "model.n_layer=1"))
    assert code == 0, err
    from gptkit.config import read_config

    cfg = read_config(tmp_path / "student" / "config.yaml")
    assert cfg.distill.teacher == str(teacher) and cfg.model.n_embd == 16
    assert (tmp_path / "student" / "tokenizer.json").read_bytes() == (
        teacher / "tokenizer.json").read_bytes()


def test_teacher_and_student_must_share_a_tokenizer(tmp_path, capsys, data_dir):
    teacher, other = tmp_path / "teacher", tmp_path / "other"
    assert run_cli(capsys, "train", "--out", str(teacher), "--no-progress",
                   *_tiny("train.max_steps=1"))[0] == 0
    assert run_cli(capsys, "train", "--out", str(other), "--no-progress",
                   *_tiny("train.max_steps=1", "data.tokenizer=bpe", "data.vocab_size=300"))[0] == 0
    code, out, err = run_cli(
        capsys, "distill", "--teacher", str(teacher), "--student-recipe", "shakespeare-char",
        "--out", str(tmp_path / "student"), "--no-progress",
        *_tiny("train.max_steps=1", f"train.init_from={other}"))
    assert code == 2
    assert "different tokenizer" in err and "must share one" in err
    assert len(err.strip().splitlines()) == 1


def test_teacher_with_a_shorter_context_is_refused(tmp_path, capsys, data_dir):
    teacher = tmp_path / "teacher"
    assert run_cli(capsys, "train", "--out", str(teacher), "--no-progress",
                   *_tiny("train.max_steps=1", "model.block_size=16"))[0] == 0
    with pytest.raises(GptkitError, match="teacher's block_size \\(16\\) is smaller"):
        from gptkit.cli import main

        main(["--debug", "distill", "--teacher", str(teacher), "--student-recipe",
              "shakespeare-char", "--out", str(tmp_path / "s"), "--no-progress",
              *_tiny("train.max_steps=1")])


def test_the_teacher_stays_frozen_in_eval_mode(tmp_path, capsys, data_dir):
    from gptkit.config import load_config
    from gptkit.train.trainer import Trainer

    teacher = tmp_path / "teacher"
    assert run_cli(capsys, "train", "--out", str(teacher), "--no-progress",
                   *_tiny("train.max_steps=1"))[0] == 0
    cfg = load_config("shakespeare-char-student",
                      [*TINY, "model.n_embd=16", f"distill.teacher={teacher}"])
    trainer = Trainer(cfg, tmp_path / "student", progress=False)
    assert trainer.objective.teacher is not None and not trainer.objective.teacher.training
    before = {n: p.clone() for n, p in trainer.objective.teacher.named_parameters()}
    trainer._train_step()
    assert all(not p.requires_grad and p.grad is None and torch.equal(p, before[n])
               for n, p in trainer.objective.teacher.named_parameters())
