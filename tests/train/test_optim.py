import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from contrastive.train.optim import build_optimizer, learning_rate_schedule


def cfg(**kw):
    base = dict(name="adamw", lr=0.1, weight_decay=1e-2, b1=0.9, b2=0.999, momentum=0.9, trust_coefficient=1e-3,
                warmup_steps=10, schedule="cosine", grad_clip_norm=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_warmup_then_cosine_to_zero():
    schedule = learning_rate_schedule(cfg(), num_steps=110)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.05, 0.1], atol=1e-7)
    np.testing.assert_allclose(schedule(60), 0.05, atol=1e-6)  # half-way through the cosine
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-7)
    constant = learning_rate_schedule(cfg(schedule="constant"), num_steps=110)
    np.testing.assert_allclose([constant(5), constant(100)], [0.05, 0.1], atol=1e-7)


@pytest.mark.parametrize("name", ["adamw", "lars", "sgd"])
def test_optimizers_minimise_and_skip_decay_on_biases(name):
    params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}
    tx = build_optimizer(cfg(name=name, lr=100.0 if name == "lars" else 0.05, weight_decay=0.5, warmup_steps=0,
                             schedule="constant"), num_steps=100)
    state = tx.init(params)
    loss = lambda p: jnp.sum((p["kernel"] - 2.0) ** 2)  # the bias has no gradient: only decay could move it
    for _ in range(50):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 9.0 * 0.5  # started at 9
    np.testing.assert_array_equal(params["bias"], jnp.ones(3))


def test_unknown_names():
    with pytest.raises(ValueError, match="optimizer.name='adam' is not one of"):
        build_optimizer(cfg(name="adam"), 10)
    with pytest.raises(ValueError, match="optimizer.schedule='linear' is not one of"):
        build_optimizer(cfg(schedule="linear"), 10)
