"""Image-text runs end to end: each config trains, LiT from an image-only checkpoint, clear refusals."""

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from contrastive.train.config import ConfigError, set_values
from contrastive.train.metrics_writer import read_metrics
from contrastive.train.runner import train_and_evaluate

TINY_TEXT = {"model.text.width": 16, "model.text.depth": 1, "model.text.num_heads": 2, "model.text.mlp_ratio": 2,
             "model.dense": (32,), "num_devices": 1}


@pytest.fixture
def tiny_image_text(tiny_config):
    def make(loss="clip", **overrides):
        return tiny_config(f"configs/{loss}_digits.py", **{**TINY_TEXT, **overrides})

    return make


def losses(workdir):
    return [r["loss"] for r in read_metrics(pathlib.Path(workdir) / "metrics.jsonl")]


def final_params(workdir, field="params"):
    directory = pathlib.Path(workdir) / "checkpoints"
    step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    return ocp.StandardCheckpointer().restore((directory / str(step) / "state").absolute())[field]


@pytest.mark.parametrize("loss", ["clip", "siglip", "infoloob"])
def test_each_image_text_config_trains_end_to_end(tiny_image_text, tmp_path, loss, capsys):
    at_end = loss == "clip"  # the final evaluation once: it is the same code for every loss
    config = tiny_image_text(loss, num_steps=12, **{"eval.at_end": at_end})
    result = train_and_evaluate(config, tmp_path)
    values = losses(tmp_path)
    assert len(values) == 12 and np.all(np.isfinite(values))
    assert np.mean(values[-3:]) < np.mean(values[:3])
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert ("logit_bias" in records[0]) == (loss == "siglip") and "logit_scale" in records[0]
    if at_end:
        saved = json.loads((tmp_path / "eval.json").read_text())
        assert saved == result and 0 <= saved["zero_shot"] <= 1
        assert set(saved["retrieval"]) >= {f"{d}/recall@{k}" for d in ("image_to_text", "text_to_image")
                                           for k in (1, 5, 10)}
        assert saved["num_test"] == 445 and saved["num_test_captions"] == 445 * 16
        assert "zero-shot top-1" in capsys.readouterr().out


@pytest.mark.slow
def test_lit_starts_from_an_image_only_run_and_keeps_its_encoder(tiny_config, tiny_image_text, tmp_path, capsys):
    train_and_evaluate(tiny_config(num_steps=3, **{"model.dense": (32,)}), tmp_path / "simclr")
    config = tiny_image_text(num_steps=4, **{"model.lit.lock_image": True,
                                             "model.lit.init_from": str(tmp_path / "simclr")})
    train_and_evaluate(config, tmp_path / "lit")
    assert "LiT: image encoder initialised from" in capsys.readouterr().err
    image_only, lit = final_params(tmp_path / "simclr"), final_params(tmp_path / "lit")
    same = [np.array_equal(a, b) for a, b in zip(_leaves(image_only["encoder"]), _leaves(lit["image"]["encoder"]))]
    assert same and all(same)
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(image_only["head"]), _leaves(lit["image"]["head"])))


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("loss, overrides, message", [
    ("clip", {"loss.name": "nt_xent"}, r"'digits_captions' is image-text data, but loss.name='nt_xent' is a "
                                       r"view-based loss; use one of clip, siglip, infoloob"),
    ("clip", {"data.name": "digits"}, r"data.name='digits' is not an image-text dataset; choose one of "
                                      r"digits_captions"),
    ("siglip", {"evals.zero_shot.templates": ("a photo of {}", "a digit")},
     r"zero_shot.templates must each contain the class slot '\{\}'; these do not: \['a digit'\]"),
    ("clip", {"augment.num_views": 2}, r"augment.num_views must be 1, got 2"),
    ("siglip", {"loss.reduction": "none"}, r"unknown config key\(s\) config.loss.reduction"),
    ("clip", {"loss.name": "supcon_typo"}, r"loss.name='supcon_typo' is not one of .*clip, siglip, infoloob"),
    ("clip", {"model.lit.init_from": "/nonexistent/run"}, r"has no checkpoints/ folder"),
])
def test_bad_image_text_config_is_refused_before_compute(tiny_image_text, tmp_path, loss, overrides, message):
    config = tiny_image_text(loss)
    set_values(config, overrides)
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_learned_scale_in_the_loss_config_is_refused(tiny_image_text, tmp_path):
    config = tiny_image_text("clip")
    with config.loss.unlocked():
        config.loss.logit_scale = 10.0
    with pytest.raises(ConfigError, match=r"config.loss.logit_scale is a learned parameter of the dual encoder"):
        train_and_evaluate(config, tmp_path / "w")


@pytest.mark.slow
def test_image_text_one_device_equals_eight_devices(tiny_image_text, tmp_path):
    """Caption choice and augmentation are keyed by global row, and the losses gather exactly."""
    for n in (1, 8):
        train_and_evaluate(tiny_image_text("siglip", num_steps=6, num_devices=n), tmp_path / str(n))
    np.testing.assert_allclose(losses(tmp_path / "1"), losses(tmp_path / "8"), rtol=2e-5, atol=2e-6)


@pytest.mark.slow
def test_a_standard_tfds_image_text_set_trains_through_the_runner(tiny_image_text, tmp_path):
    """RefCOCO from `tfds.testing.mock_data` (random images and words): resized to 8x8 RGB, tokenized,
    trained and evaluated (retrieval only: it has no zero-shot class names) by the same runner, with a
    periodic evaluation at step 2."""
    import tensorflow_datasets as tfds

    config = tiny_image_text("clip", num_steps=3, batch_size=8, **{
        "data.name": "ref_coco", "data.train_split": "train", "data.test_split": "validation",
        "data.image_size": (8, 8), "model.text.max_captions": 4, "eval.at_end": True, "eval.batch_size": 8,
        **{f"evals.{name}.every_steps": 2 for name in ("zero_shot", "retrieval", "probes")}})
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        result = train_and_evaluate(config, tmp_path)
    assert np.all(np.isfinite(losses(tmp_path))) and len(losses(tmp_path)) == 3
    assert "zero_shot" not in result and 0 <= result["retrieval"]["image_to_text/recall@1"] <= 1
    assert "image_to_text/recall@10" not in result["retrieval"]  # 8 test images: R@10 is undefined
    history = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2] and set(history[0]) == set(result)  # periodic eval, then the end


@pytest.mark.slow
def test_a_batchnorm_image_tower_trains_and_keeps_its_batch_statistics(tiny_image_text, tmp_path):
    """A ResNet image tower (BatchNorm) in the dual encoder: the step writes this batch's statistics into
    the model state (it used to fail to trace: BatchStat mutated from another trace level)."""
    config = tiny_image_text("clip", num_steps=3, **{"model.encoder": "resnet18", "model.resnet.width": 0.125})
    train_and_evaluate(config, tmp_path)
    values = losses(tmp_path)
    assert len(values) == 3 and np.all(np.isfinite(values))
    leaves = [np.asarray(x) for x in jax.tree.leaves(final_params(tmp_path, "model_state"))]
    assert leaves and any(np.any(x != 0) and np.any(x != 1) for x in leaves)  # running stats moved off init
