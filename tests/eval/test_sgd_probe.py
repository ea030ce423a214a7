"""Mini-batch linear probe: deterministic, bounded to one mini-batch on the device, right on easy data.

Its agreement with the full-batch L-BFGS probe on the digits is tested through the evaluator
(tests/eval/test_probes_at_scale.py)."""

import numpy as np
import pytest

from contrastive.eval import sgd_probe
from contrastive.eval.sgd_probe import minibatch_linear_probe


def mixture(n, m, dim, classes, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(classes, dim))
    train_y, test_y = rng.integers(0, classes, n), rng.integers(0, classes, m)
    train_x = (centres[train_y] + rng.normal(size=(n, dim))).astype(np.float32)
    test_x = (centres[test_y] + rng.normal(size=(m, dim))).astype(np.float32)
    return train_x, train_y, test_x, test_y


def test_deterministic_given_the_seed():
    data = mixture(300, 100, 8, 4, 1.0)
    kwargs = dict(l2_grid=(1e-3, 1e-1), batch_size=64, epochs=5, learning_rate=0.05)
    first = minibatch_linear_probe(*data, seed=3, **kwargs)
    assert first == minibatch_linear_probe(*data, seed=3, **kwargs)
    assert first["steps"] == 5 * 5  # ceil(300 / 64) batches per epoch
    assert set(first) == {"accuracy", "l2", "train_accuracy", "holdout_accuracy", "grid_holdout_accuracy", "steps"}
    assert any(first["l2"] == pytest.approx(v) for v in (1e-3, 1e-1))


def test_separable_mixture_is_learned_exactly():
    result = minibatch_linear_probe(*mixture(400, 200, 6, 3, 8.0), l2_grid=(1e-4,), batch_size=32, epochs=10,
                                    learning_rate=0.05)
    assert result["accuracy"] == 1.0 and result["train_accuracy"] == 1.0
    assert "holdout_accuracy" not in result  # one l2: nothing held out


def test_the_device_never_sees_more_than_one_mini_batch(monkeypatch):
    """Every jitted call gets one mini-batch of rows, and none of its intermediates is bigger than the
    stacked models or their mini-batch logits: nothing of size N_train ever reaches the device."""
    n, dim, classes, batch, grid = 1000, 12, 7, 64, (1e-3, 1e-2)
    models = 2 * len(grid)
    seen, step = [], sgd_probe._step
    for name, x_arg in (("_step", 2), ("_score", 1)):
        jitted = getattr(sgd_probe, name)

        def spy(*args, _jitted=jitted, _name=name, _x=x_arg):
            seen.append((_name, args[_x].shape))  # x, the rows this call sees
            return _jitted(*args)

        monkeypatch.setattr(sgd_probe, name, spy)
    train_x, train_y, test_x, test_y = mixture(n, 300, dim, classes, 1.0)
    minibatch_linear_probe(train_x, train_y, test_x, test_y, l2_grid=grid, batch_size=batch, epochs=2)
    assert {shape for _, shape in seen} == {(batch, dim)}
    assert {name for name, _ in seen} == {"_step", "_score"}

    params = (np.zeros((models, dim, classes), np.float32), np.zeros((models, classes), np.float32))
    opt_state = sgd_probe.optax.scale_by_adam().init(params)
    rows = np.zeros(batch, np.float32)
    jaxpr = step.trace(
        params, opt_state, np.zeros((batch, dim), np.float32), np.zeros(batch, np.int32), rows, rows,
        np.zeros(models, bool), np.zeros(dim, np.float32), np.ones(dim, np.float32), np.ones(models, np.float32),
        np.float32(0.1)).jaxpr
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars]
    assert max(sizes) == models * batch * classes  # the logits of one mini-batch, for every stacked model


@pytest.mark.parametrize("kwargs, name", [(dict(batch_size=0), "batch_size"), (dict(epochs=0), "epochs"),
                                          (dict(learning_rate=0.0), "learning_rate"),
                                          (dict(train_y=np.zeros(7, int)), "train_y")])
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(train_x=np.ones((10, 4)), train_y=np.arange(10) % 3, test_x=np.ones((5, 4)),
                test_y=np.arange(5) % 3, l2_grid=(1e-2,))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        minibatch_linear_probe(**args)


def test_non_finite_features_are_refused():
    train_x, train_y, test_x, test_y = mixture(50, 20, 4, 2, 1.0)
    train_x[7, 2] = np.inf
    with pytest.raises(ValueError, match="train_x"):
        minibatch_linear_probe(train_x, train_y, test_x, test_y)
