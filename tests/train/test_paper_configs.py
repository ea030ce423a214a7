"""The published-recipe configs (CIFAR-10 ResNet-18 SimCLR/BYOL, ImageNet ResNet-50 SimCLR) pass every check
the runner makes before reading data, and scale their learning rate and schedule with batch and epochs."""

import pytest

from contrastive.train.config import load_config
from contrastive.train.runner import check_config


@pytest.mark.parametrize("name, examples, lr_per_256", [
    ("simclr_cifar10_resnet18", 50_000, 0.4), ("byol_cifar10_resnet18", 50_000, 1.0),
    ("simclr_imagenet_resnet50", 1_281_167, 0.3)])
def test_paper_configs_pass_the_checks_and_scale_with_batch_and_epochs(name, examples, lr_per_256):
    c = load_config(f"configs/{name}.py:20")
    setup = check_config(c)
    steps_per_epoch = examples // c.batch_size
    assert c.num_steps == 20 * steps_per_epoch and c.optimizer.warmup_steps == 10 * steps_per_epoch
    assert c.optimizer.lr == pytest.approx(lr_per_256 * c.batch_size / 256)
    assert setup.augment.num_views == 2 and c.optimizer.name == "lars"
    if name.startswith("byol"):
        assert c.augment.solarize_prob == (0.0, 0.2) and c.model.predictor_hidden == (4096,)
