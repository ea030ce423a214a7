"""The ring path (impl='ring') equals the gather path in value, metrics and gradient, on 1 and 8 devices."""

import jax
import numpy as np
import pytest

from contrastive.losses import clip, nt_xent
from tests.losses.helpers import assert_trees_close, data_mesh, value_and_grad
from tests.parallel.cases import CASES


def reference(name):
    loss_fn, num_diff, args = CASES[name]
    return value_and_grad(loss_fn, num_diff)(*args)


FAST = ("clip", "nt_xent")  # the other cases share their code path; they compile in ~5 s each
ALL_CASES = [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(CASES)]


@pytest.mark.parametrize("name", ALL_CASES)
def test_ring_on_eight_devices_equals_gather(name):
    loss_fn, num_diff, args = CASES[name]
    ring = value_and_grad(loss_fn, num_diff, distributed=True, impl="ring")(*args)
    assert_trees_close(ring, reference(name))


@pytest.mark.parametrize("name", ["clip", pytest.param("nt_xent", marks=pytest.mark.slow)])
def test_ring_on_one_device_equals_gather(name):
    loss_fn, num_diff, args = CASES[name]
    assert_trees_close(value_and_grad(loss_fn, num_diff, impl="ring")(*args), reference(name))


def test_ring_finite_at_logits_of_1e4():
    loss_fn, num_diff, (x, y, _) = CASES["clip"]
    (loss, metrics), grads = value_and_grad(loss_fn, num_diff, distributed=True, impl="ring")(
        x, y, np.float32(1e4)
    )
    for leaf in jax.tree.leaves((loss, metrics, grads)):
        assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize("loss", [clip, nt_xent])
def test_ring_never_gathers(loss):
    hparams = {"logit_scale": 5.0} if loss is clip else {"temperature": 0.5}
    f = jax.shard_map(
        lambda a, b: loss(a, b, axis_name="data", impl="ring", **hparams)[0],
        mesh=data_mesh(),
        in_specs=jax.P("data"),
        out_specs=jax.P(),
    )
    _, _, (x, y, _) = CASES["clip"]
    jaxpr = str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, y))
    assert "ppermute" in jaxpr
    assert "all_gather" not in jaxpr


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"impl": "ring", "hardest_negatives": 2}, "hardest_negatives"),
        ({"chunk_size": 4, "hardest_negatives": 2}, "hardest_negatives"),
        ({"impl": "rings"}, "impl"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    _, _, (x, y, _) = CASES["clip"]
    with pytest.raises(ValueError, match=match):
        clip(x, y, logit_scale=5.0, **kwargs)
    with pytest.raises(ValueError, match=match):
        nt_xent(x, y, temperature=0.5, **kwargs)
