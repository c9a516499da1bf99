"""A context window you can change (issue 22, item 4): crop or extend a trained model's
block_size, in Python (`gptkit.context`) and by `--init-from RUN --set model.block_size=N`."""

from __future__ import annotations

import pytest
import torch

from gptkit.config import ModelConfig, load_config, read_config
from gptkit.config.context import resized_model_config
from gptkit.context import position_table, resize_context
from gptkit.errors import GptkitError
from gptkit.model import GPT
from gptkit.run import load_run
from gptkit.train.trainer import train
from tests.conftest import TINY

OLD = 16


def tiny(pos_embedding: str = "learned", **options) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=OLD, vocab_size=50,
                         pos_embedding=pos_embedding, **options)
    return GPT(config).eval()


def logits(model: GPT, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs)[0]


IDS = torch.randint(0, 50, (2, OLD), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_cropping_keeps_the_logits_of_the_positions_left(pos):
    model = tiny(pos)
    cropped = resize_context(model, 8)
    assert cropped.config.block_size == 8 and cropped.config.context_extension is None
    if pos == "learned":
        assert cropped.transformer.wpe.weight.shape == (8, 32)
    assert torch.equal(logits(cropped, IDS[:, :8]), logits(model, IDS[:, :8]))
    with pytest.raises(GptkitError, match="exceeds model.block_size"):
        cropped(IDS[:, :9])


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "norm": "rmsnorm"}], ids=str)
def test_extending_learned_positions_by_copy_keeps_the_old_logits_exactly(options):
    model = tiny(**options)
    extended = resize_context(model, 40)  # copy is learned positions' default
    assert extended.config.context_extension == "copy"
    table, old = extended.transformer.wpe.weight, model.transformer.wpe.weight
    assert torch.equal(table[:OLD], old) and torch.equal(table[OLD:2 * OLD], old)
    assert torch.equal(table[2 * OLD:], old[: 40 - 2 * OLD])
    assert torch.equal(logits(extended, IDS), logits(model, IDS))
    logits(extended, torch.randint(0, 50, (1, 40)))  # and it reads the whole new context


def test_interpolated_learned_positions_keep_their_ends_and_resample_between():
    table = torch.arange(4.0)[:, None].repeat(1, 3)  # rows 0, 1, 2, 3
    resampled = position_table(table, 7, "interpolate")
    assert resampled[:, 0].tolist() == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5, 3])
    model = tiny()
    extended = resize_context(model, 32, "interpolate")
    assert torch.equal(extended.transformer.wpe.weight[0], model.transformer.wpe.weight[0])
    assert torch.equal(extended.transformer.wpe.weight[-1], model.transformer.wpe.weight[-1])


def test_rope_position_interpolation_reads_position_p_as_the_old_model_read_p_times_old_over_new():
    """What is true after position interpolation: the old positions DO change (position p
    now means p / 2 for a doubled context), and the new model at positions 0, 2, 4, ...
    computes exactly what the old one did at 0, 1, 2, ..."""
    model = tiny("rope")
    extended = resize_context(model, 2 * OLD)
    assert (extended.config.context_extension, extended.config.rope_scale) == ("interpolate", 0.5)
    old_positions = torch.arange(OLD)[None].repeat(2, 1)
    torch.testing.assert_close(logits(extended, IDS, position_ids=2 * old_positions),
                               logits(model, IDS, position_ids=old_positions))
    assert not torch.allclose(logits(extended, IDS), logits(model, IDS))
    # extended twice: the scales compound
    again = resize_context(extended, 8 * OLD)
    assert again.config.rope_scale == 0.125


def test_rope_ntk_scaling_raises_the_base_and_keeps_the_weights():
    model = tiny("rope")  # head size 16: base x 4 ** (16 / 14)
    extended = resize_context(model, 4 * OLD, "ntk")
    assert extended.config.rope_base == pytest.approx(10_000 * 4 ** (16 / 14))
    assert extended.config.rope_scale == 1.0
    for key, value in model.state_dict().items():
        assert torch.equal(extended.state_dict()[key], value), key
    # the first position sees only itself: no rotation can change it
    assert torch.equal(logits(extended, IDS)[:, 0], logits(model, IDS)[:, 0])


def test_a_scaled_rope_model_decodes_with_its_cache_as_it_reads_whole():
    extended = resize_context(tiny("rope"), 2 * OLD)
    ids = torch.randint(0, 50, (1, 2 * OLD))
    cache = extended.new_kv_cache(1)
    with torch.no_grad():
        steps = torch.cat([extended(ids[:, i:i + 1], kv_cache=cache)[0] for i in range(2 * OLD)],
                          dim=1)
    torch.testing.assert_close(steps, logits(extended, ids))


@pytest.mark.parametrize("pos,size,method,match", [
    ("learned", 16, "copy", "does nothing: model.block_size=16 is the model's context"),
    ("learned", 8, "copy", "does nothing: model.block_size=8 crops"),
    ("learned", 32, "ntk", "does not apply to the model's learned positions; use copy or "
                           "interpolate"),
    ("rope", 32, "copy", "does not apply to the model's rope positions; use interpolate or ntk"),
    ("rope", 17 * OLD, None, "more than 16x"),
    ("learned", 17 * OLD, "copy", "more than 16x"),
])
def test_bad_context_changes_are_one_line_errors(pos, size, method, match):
    with pytest.raises(GptkitError, match=match) as caught:
        resized_model_config(tiny(pos).config, size, method)
    assert "\n" not in str(caught.value)


def test_a_scaled_rope_model_is_refused_by_gguf_export_and_a_learned_one_exports_its_table():
    from gptkit.interop.gguf import gguf_architecture
    from gptkit.interop.hf import hf_config

    llama = {"norm": "rmsnorm", "mlp": "swiglu"}
    scaled = resized_model_config(tiny("rope", **llama).config, 2 * OLD)
    with pytest.raises(GptkitError, match=r"rope_scale=0.5 .* to GGUF; extend .*=ntk"):
        gguf_architecture(scaled)  # and never reaches the writer
    assert gguf_architecture(resized_model_config(scaled.updated(rope_scale=1.0), 64, "ntk")
                             ) == "llama"
    assert hf_config(resized_model_config(tiny().config, 64))["n_positions"] == 64


# --- through the trainer: --init-from RUN --set model.block_size=N -----------------------
SHORT = ["train.max_steps=2", "train.eval_interval=2", "train.checkpoint_interval=1",
         "train.warmup_steps=1", "log.sample_tokens=0"]


def test_init_from_with_another_block_size_crops_or_extends_and_trains(tiny_run, tmp_path):
    base = load_run(tiny_run)  # TINY: learned positions, context 32
    sample = torch.randint(0, 60, (1, 16))
    for size, method in ((16, None), (96, "copy"), (64, "interpolate")):
        extra = [] if method is None else [f"model.context_extension={method}"]
        config = load_config("shakespeare-char", [*TINY, *SHORT, f"train.init_from={tiny_run}",
                                                  f"model.block_size={size}", *extra])
        out = tmp_path / f"ctx-{size}"
        train(config, out, progress=False)
        saved = read_config(out / "config.yaml").model
        assert (saved.block_size, saved.context_extension) == (size, method)
        run = load_run(out)
        assert run.model.transformer.wpe.weight.shape == (size, 32)
        logits(run.model, torch.randint(0, 60, (1, size)))  # reads its whole context
    # before any training step, the un-extended positions give the old logits
    fresh = resize_context(base.model, 96)
    assert torch.equal(logits(fresh, sample), logits(base.model, sample))


def test_an_extended_rope_run_saves_its_scaling_resumes_and_loads(data_dir, tmp_path):
    rope = ["model.pos_embedding=rope"]
    train(load_config("shakespeare-char", [*TINY, *SHORT, *rope]), tmp_path / "base",
          progress=False)
    sets = [*TINY, *SHORT, f"train.init_from={tmp_path / 'base'}", "model.block_size=64"]
    train(load_config("shakespeare-char", sets), tmp_path / "long", progress=False)
    saved = read_config(tmp_path / "long" / "config.yaml")
    assert (saved.model.rope_scale, saved.model.context_extension) == (0.5, "interpolate")
    run = load_run(tmp_path / "long")
    assert run.model.config.rope_scale == 0.5
    train(saved.updated(train=saved.train.updated(max_steps=3)), tmp_path / "long",
          resume=True, progress=False)
    # a run started from the extended one keeps its scaling and names no extension
    keep = [s for s in TINY if not s.startswith("model.")]
    again = load_config("shakespeare-char", [*keep, f"train.init_from={tmp_path / 'long'}"])
    assert (again.model.block_size, again.model.rope_scale) == (64, 0.5)
    assert again.model.context_extension is None


def test_a_method_without_a_larger_block_size_is_refused_before_training(tiny_run):
    sets = [*TINY, f"train.init_from={tiny_run}", "model.context_extension=copy"]
    with pytest.raises(GptkitError, match="does nothing: model.block_size=32 is train.init_from"):
        load_config("shakespeare-char", sets)
    with pytest.raises(GptkitError, match="conflicts with train.init_from"):
        load_config("shakespeare-char", [*sets[:-1], "model.n_embd=64"])
