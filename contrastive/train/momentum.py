"""State that evolves beside the parameters: an EMA target network and a FIFO queue of past keys.

* EMA target (BYOL: Grill et al. 2020; MoCo: He et al. 2020). After every optimizer update,
  xi <- m * xi + (1 - m) * theta. BYOL's schedule raises m from m_0 to m_end along a cosine,
  m(k) = m_end - (m_end - m_0) * (cos(pi k / K) + 1) / 2 over the K training steps (m_end = 1 in the
  paper); m_end = m_0 gives MoCo's constant momentum. Updating after the step is MoCo's order too:
  MoCo updates the key encoder before computing keys with it, which is the same sequence of targets
  because the target starts as a copy of the online network (the first update is a no-op).
* Key queue (MoCo). A [K, D] ring buffer of L2-normalised keys with a write pointer. Each step enqueues
  the keys of the GLOBAL batch (the step sees the whole batch under `jax.jit`, so every device's keys go
  in, in global row order) over the oldest ones; K must be a multiple of the global batch. It starts as
  random unit vectors, as in the MoCo code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def ema_momentum(step: jax.Array, num_steps: int, start: float, end: float) -> jax.Array:
    """m at `step` of `num_steps`: cosine from `start` to `end` (constant when they are equal)."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"EMA momentum must satisfy 0 <= start <= end <= 1, got start={start}, end={end}")
    if start == 1.0:
        return jnp.ones((), jnp.float32)
    schedule = optax.cosine_decay_schedule(init_value=1.0 - start, decay_steps=max(num_steps, 1),
                                           alpha=(1.0 - end) / (1.0 - start))
    return 1.0 - schedule(step)


def ema_update(target, online, momentum: jax.Array):
    """momentum * target + (1 - momentum) * online, leaf by leaf."""
    return optax.incremental_update(online, target, step_size=1.0 - momentum)


def init_queue(key: jax.Array, size: int, dim: int) -> dict:
    keys = jax.random.normal(key, (size, dim), jnp.float32)
    return {"keys": keys / jnp.linalg.norm(keys, axis=1, keepdims=True), "ptr": jnp.zeros((), jnp.int32)}


def check_queue_size(size: int, global_batch: int) -> None:
    if size < global_batch or size % global_batch:
        raise ValueError(f"queue_size={size} must be a positive multiple of the global batch size {global_batch} "
                         "(each step replaces one whole batch of the oldest keys)")


def enqueue(queue: dict, keys: jax.Array) -> dict:
    """Write `keys` [B, D] (normalised here, without gradient) over the B oldest entries."""
    keys = jax.lax.stop_gradient(keys)
    keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    size, batch = queue["keys"].shape[0], keys.shape[0]
    updated = jax.lax.dynamic_update_slice(queue["keys"], keys.astype(queue["keys"].dtype), (queue["ptr"], 0))
    return {"keys": updated, "ptr": (queue["ptr"] + batch) % size}
