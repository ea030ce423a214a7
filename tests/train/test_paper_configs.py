"""The published-recipe configs (CIFAR-10 ResNet-18 SimCLR/BYOL, ImageNet ResNet-50 SimCLR, COCO ViT-B/16
CLIP) pass every check the runner makes before reading data, and scale their learning rate and schedule
with batch and epochs."""

import numpy as np
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


def test_clip_coco_vit_b16_has_clips_recipe_and_towers():
    """CLIP's ViT-B/16 recipe (Radford et al. 2021, app. F) passes the checks; the towers have the published
    sizes: the ViT-B/16 image encoder's 85,798,656 parameters and CLIP's 12-layer, 512-wide text Transformer
    over a 49,408-word vocabulary (25,296,896 token + 39,424 position embeddings + 12 x 3,152,384 + 1,024 final
    norm = 63,165,952), counted with nnx.eval_shape (no parameter is allocated)."""
    import jax
    from flax import nnx

    from contrastive.models.dual import build_dual_encoder

    c = load_config("configs/clip_coco_vit_b16.py")
    setup = check_config(c)
    assert setup.family == "image_text" and [e.name for e, _ in setup.evals] == ["retrieval"]
    assert (c.batch_size, c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.b2) == (32_768, 5e-4, 0.2, 0.98)
    assert c.optimizer.warmup_steps == 2_000 and c.num_steps == 10_000 * (82_783 // 32_768)
    assert c.model.logit_scale_init == pytest.approx(-np.log(0.07)) and c.model.logit_scale_max == 100.0
    assert load_config("configs/clip_coco_vit_b16.py:1001").num_steps == 2_002  # EPOCHS x 2 steps per epoch
    model = nnx.eval_shape(lambda: build_dual_encoder(c.model, (224, 224, 3), 49_408, seed=0, with_bias=False))

    def count(module):
        return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))

    assert count(model.image.encoder) == 85_798_656
    assert count(model.text.transformer) == 25_296_896 + 39_424 + 12 * 3_152_384 + 1_024
    assert count(model.text.projection) == 512 * 512 and count(model.image.head) == 768 * 512 + 512
