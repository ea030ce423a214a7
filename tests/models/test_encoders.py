import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive.models.encoders import build_model


def cfg(**kw):
    base = dict(encoder="cnn", widths=(8, 16), dense=(), head_hidden=(32,), projection_dim=12, head_norm="layer",
                predictor_hidden=())
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


def test_predictor_and_batch_norm_heads():
    model = build_model(cfg(head_norm="batch", predictor_hidden=(6,)), (8, 8, 1), seed=0)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 8, 1))
    z = model(x)
    assert model.predict(z).shape == (16, 12) and model.projection_dim == 12
    # Training mode normalises with the batch's statistics: the first hidden layer's pre-activations
    # have zero mean over the batch, and the running averages move towards them.
    hidden = model.head.norms[0](model.head.layers[0](model.encode(x)))
    np.testing.assert_allclose(hidden.mean(axis=0), 0.0, atol=1e-5)
    assert np.any(np.asarray(model.head.norms[0].mean[...]) != 0)
    # Evaluation mode uses the running averages, so a row's output no longer depends on the rest of the batch.
    model.eval()
    np.testing.assert_allclose(model(x[:3]), model(x)[:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="has no predictor"):
        build_model(cfg(), (8, 8, 1), seed=0).predict(z)
    with pytest.raises(ValueError, match="norm='group' is not one of"):
        build_model(cfg(head_norm="group"), (8, 8, 1), seed=0)
