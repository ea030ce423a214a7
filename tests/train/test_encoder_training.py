"""The ResNet and ViT encoders train through the runner, the same on 1 and 8 devices."""

import numpy as np
import pytest


@pytest.mark.slow
def test_a_narrow_resnet_trains_through_the_runner_on_one_and_eight_devices(tiny_config, tmp_path):
    from contrastive.train.metrics_writer import read_metrics
    from contrastive.train.runner import train_and_evaluate

    def losses(devices):
        config = tiny_config(num_steps=4, num_devices=devices, **{
            "model.encoder": "resnet18", "model.resnet.width": 0.125, "model.dense": (),
            "optimizer.name": "sgd", "optimizer.lr": 0.05})
        train_and_evaluate(config, tmp_path / str(devices))
        return [r["loss"] for r in read_metrics(tmp_path / str(devices) / "metrics.jsonl")]

    one, eight = losses(1), losses(8)
    assert len(one) == 4 and np.all(np.isfinite(one))
    # BatchNorm over the global batch: per-device statistics would change the loss at step 0 already. Later
    # steps drift by round-off that twenty BatchNorms over 1x1 maps amplify (~5e-4 relative by step 3).
    np.testing.assert_allclose(eight[:2], one[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eight, one, rtol=2e-3)


@pytest.mark.slow
def test_a_vit_trains_through_the_runner_and_its_features_are_probed(tiny_config, tmp_path):
    from contrastive.train.metrics_writer import read_metrics
    from contrastive.train.runner import train_and_evaluate

    config = tiny_config(num_steps=3, **{"model.encoder": "vit_ti", "model.vit.patch_size": 2, "eval.at_end": True,
                                         "evals.probes.representations": ("learned",),
                                         "evals.view_geometry.at_end": False})
    result = train_and_evaluate(config, tmp_path)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert result["learned"]["feature_dim"] == 192 and 0.1 < result["learned"]["linear_probe"] <= 1.0


def test_a_vit_patch_size_that_does_not_divide_the_images_is_refused_before_the_workdir(tiny_config, tmp_path):
    from contrastive.train.config import ConfigError
    from contrastive.train.runner import train_and_evaluate

    config = tiny_config(**{"model.encoder": "vit_ti", "model.vit.patch_size": 3})
    with pytest.raises(ConfigError, match=r"model.vit.patch_size=3 must divide the image size 8 x 8"):
        train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()
