"""ResNet encoders: published parameter counts, shapes, the zero-init identity, norms and the runner."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from contrastive.models.encoders import mixing_modules, num_params
from contrastive.models.resnet import ResNet


@pytest.mark.parametrize("variant, stem, count", [
    ("resnet18", "imagenet", 11_176_512),
    ("resnet34", "imagenet", 21_284_672),
    ("resnet50", "imagenet", 23_508_032),
    ("resnet18", "cifar", 11_168_832),
])
def test_parameter_counts_without_the_classifier_equal_the_published_networks(variant, stem, count):
    # torchvision's totals less the 1000-way classifier: 11,689,512 / 21,797,672 / 25,557,032 - fc.
    model = nnx.eval_shape(lambda: ResNet(variant, 3, stem=stem, rngs=nnx.Rngs(0)))
    assert num_params(model) == count


@pytest.mark.parametrize("variant, stem, size, features", [
    ("resnet18", "cifar", 32, 512), ("resnet50", "imagenet", 64, 2048)])
def test_features_are_pooled_to_the_last_stage_width(variant, stem, size, features):
    model = ResNet(variant, 3, stem=stem, width=0.125, rngs=nnx.Rngs(0))
    out = model(jnp.ones((2, size, size, 3)))
    assert out.shape == (2, features // 8) == (2, model.out_features)


def test_zero_init_residual_makes_every_block_without_a_shortcut_the_identity():
    model = ResNet("resnet18", 3, stem="cifar", width=0.25, zero_init_residual=True, rngs=nnx.Rngs(0))
    plain = [b for b in model.blocks if b.shortcut is None]
    assert len(plain) == 5  # both of the first stage's, and the second of each later stage's
    for block in plain:
        channels = block.convs[0].in_features
        x = jax.nn.relu(jax.random.normal(jax.random.key(1), (4, 8, 8, channels)))  # an input is post-ReLU
        np.testing.assert_allclose(block(x), x, atol=1e-6)
    other = ResNet("resnet18", 3, stem="cifar", width=0.25, rngs=nnx.Rngs(0))
    x = jax.nn.relu(jax.random.normal(jax.random.key(1), (4, 8, 8, 16)))
    assert float(jnp.abs(other.blocks[1](x) - x).max()) > 0.1


def test_group_norm_mixes_no_examples_and_batch_norm_does():
    group = ResNet("resnet18", 3, norm="group", width=0.125, rngs=nnx.Rngs(0))
    batch = ResNet("resnet18", 3, norm="batch", width=0.125, rngs=nnx.Rngs(0))
    assert mixing_modules(group) == [] and len(mixing_modules(batch)) == 20  # 17 convs' norms + 3 shortcuts'
    x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
    np.testing.assert_allclose(group(x)[:2], group(x[:2]), atol=1e-5)  # each example alone
    assert float(jnp.abs(batch(x)[:2] - batch(x[:2])).max()) > 1e-3
