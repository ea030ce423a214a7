"""ViT encoders: published parameter counts, pooling, and position embeddings resized to a new grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from contrastive.models.encoders import num_params
from contrastive.models.vit import ViT


@pytest.mark.parametrize("variant, count", [("vit_s", 21_665_664), ("vit_b", 85_798_656)])
def test_parameter_counts_at_224_without_the_classifier_equal_the_published_networks(variant, count):
    # timm's vit_small/base_patch16_224 totals (22,050,664 / 86,567,656) less the 1000-way head.
    model = nnx.eval_shape(lambda: ViT(variant, (224, 224, 3), patch_size=16, rngs=nnx.Rngs(0)))
    assert num_params(model) == count


def test_cls_and_gap_pooling_and_a_larger_image_use_resized_position_embeddings():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    cls = ViT("vit_ti", (8, 8, 1), patch_size=2, rngs=nnx.Rngs(0))
    gap = ViT("vit_ti", (8, 8, 1), patch_size=2, pool="gap", rngs=nnx.Rngs(0))
    assert cls(x).shape == gap(x).shape == (2, 192) and cls.out_features == 192
    assert float(jnp.abs(cls(x) - gap(x)).max()) > 1e-3
    table = cls.position_embeddings((4, 4))
    np.testing.assert_array_equal(table, cls.position_embed[...])  # its own grid: unchanged
    big = cls.position_embeddings((8, 8))  # a 16x16 image
    assert big.shape == (65, 192)
    np.testing.assert_array_equal(big[0], table[0])  # the class token's is kept
    # Bilinear resizing keeps a constant field constant and the mean of the patch embeddings roughly.
    np.testing.assert_allclose(big[1:].mean(0), table[1:].mean(0), atol=0.01)
    assert cls(jax.random.normal(jax.random.key(1), (2, 16, 16, 1))).shape == (2, 192)


def test_a_patch_size_that_does_not_divide_the_image_is_refused():
    with pytest.raises(ValueError, match=r"model.vit.patch_size=3 must divide the image size 8 x 8"):
        ViT("vit_ti", (8, 8, 1), patch_size=3, rngs=nnx.Rngs(0))
