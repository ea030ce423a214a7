"""EMA target schedule and update, and the FIFO key queue (contrastive.train.momentum)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive.train import momentum
from contrastive.train.checkpoint import Checkpointer, abstract_like
from contrastive.train.step import TrainState


def test_cosine_momentum_schedule_matches_byol():
    steps = 100
    m = np.array([float(momentum.ema_momentum(k, steps, 0.996, 1.0)) for k in range(steps + 1)])
    expected = [1 - (1 - 0.996) * (math.cos(math.pi * k / steps) + 1) / 2 for k in range(steps + 1)]
    np.testing.assert_allclose(m, expected, atol=1e-7)
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0)
    assert np.all(np.diff(m) >= 0)
    constant = [float(momentum.ema_momentum(k, steps, 0.99, 0.99)) for k in (0, 50, 100)]
    np.testing.assert_allclose(constant, 0.99, rtol=1e-7)
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        momentum.ema_momentum(0, steps, 0.999, 0.99)


def test_ema_update_is_the_convex_combination():
    target = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    online = {"w": jnp.array([5.0, -2.0]), "b": jnp.array(1.0)}
    out = momentum.ema_update(target, online, jnp.float32(0.75))
    np.testing.assert_allclose(out["w"], 0.75 * np.array([1.0, 2.0]) + 0.25 * np.array([5.0, -2.0]), rtol=1e-6)
    np.testing.assert_allclose(out["b"], 0.75 * 3.0 + 0.25 * 1.0, rtol=1e-6)


def test_queue_is_fifo_and_wraps():
    size, batch, dim = 6, 2, 3
    queue = momentum.init_queue(jax.random.PRNGKey(0), size, dim)
    np.testing.assert_allclose(np.linalg.norm(queue["keys"], axis=1), 1.0, rtol=1e-6)
    initial = np.asarray(queue["keys"])
    batches = [jax.random.normal(jax.random.PRNGKey(i + 1), (batch, dim)) * (i + 2) for i in range(4)]
    unit = [np.asarray(b / jnp.linalg.norm(b, axis=1, keepdims=True)) for b in batches]
    queue = momentum.enqueue(queue, batches[0])
    np.testing.assert_allclose(queue["keys"][:2], unit[0], rtol=1e-6)
    np.testing.assert_array_equal(queue["keys"][2:], initial[2:])  # the rest untouched
    for b in batches[1:3]:
        queue = momentum.enqueue(queue, b)
    assert int(queue["ptr"]) == 0  # full: the next batch replaces the oldest
    np.testing.assert_allclose(queue["keys"], np.concatenate(unit[:3]), rtol=1e-6)
    queue = momentum.enqueue(queue, batches[3])
    np.testing.assert_allclose(queue["keys"], np.concatenate([unit[3], unit[1], unit[2]]), rtol=1e-6)
    assert int(queue["ptr"]) == 2


def test_enqueue_passes_no_gradient():
    queue = momentum.init_queue(jax.random.PRNGKey(0), 4, 3)
    grad = jax.grad(lambda k: momentum.enqueue(queue, k)["keys"].sum())(jnp.ones((2, 3)))
    assert not np.any(np.asarray(grad))


@pytest.mark.parametrize("size,batch", [(100, 64), (32, 64), (0, 64)])
def test_queue_size_must_be_a_multiple_of_the_batch(size, batch):
    with pytest.raises(ValueError, match="must be a positive multiple of the global batch size 64"):
        momentum.check_queue_size(size, batch)


def test_queue_and_target_round_trip_through_a_checkpoint(tmp_path):
    params = {"w": jax.random.normal(jax.random.PRNGKey(1), (4, 3))}
    queue = momentum.enqueue(momentum.init_queue(jax.random.PRNGKey(2), 8, 3), jnp.ones((4, 3)))
    state = TrainState(step=jnp.array(7, jnp.int32), params=params, model_state={}, opt_state=(),
                       rng=jax.random.PRNGKey(0),
                       method_state={"target": jax.tree.map(lambda x: x * 0.5, params), "queue": queue,
                                     "correlation": jnp.eye(3) * 2.0})
    checkpointer = Checkpointer(tmp_path, every_steps=1, keep=1)
    checkpointer.save(7, state, {"data_position": 7}, force=True)
    checkpointer.wait()
    restored, _, step = checkpointer.restore_latest(abstract_like(state))
    checkpointer.close()
    assert step == 7
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(restored.method_state["queue"]["ptr"]) == 4
