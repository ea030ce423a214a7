import jax.numpy as jnp
import ml_collections
import pytest

from contrastive.models.encoders import build_model


def cfg(**kw):
    base = dict(encoder="cnn", widths=(8, 16), dense=(), head_hidden=(32,), projection_dim=12)
    return ml_collections.ConfigDict({**base, **kw})


@pytest.mark.parametrize("kw,feature_dim", [({}, 16), ({"dense": (24,)}, 24), ({"encoder": "mlp"}, 16)])
def test_shapes(kw, feature_dim):
    model = build_model(cfg(**kw), (8, 8, 1), seed=0)
    x = jnp.ones((5, 8, 8, 1))
    assert model.encode(x).shape == (5, feature_dim)
    assert model(x).shape == (5, 12)


def test_same_seed_same_init_and_unknown_encoder():
    a, b = build_model(cfg(), (8, 8, 1), seed=3), build_model(cfg(), (8, 8, 1), seed=3)
    x = jnp.ones((2, 8, 8, 1))
    assert jnp.array_equal(a(x), b(x))
    with pytest.raises(ValueError, match="model.encoder='vit' is not one of"):
        build_model(cfg(encoder="vit"), (8, 8, 1), seed=0)
