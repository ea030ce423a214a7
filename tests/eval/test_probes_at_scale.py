"""The evaluators at scale: features encoded over the mesh, the linear solver and the kNN bank chosen by size."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import common
from contrastive.models.encoders import build_model
from contrastive.parallel.mesh import make_mesh
from contrastive.train import evaluators
from contrastive.train.config import ConfigError
from contrastive.train.step import init_state, make_encode_fn, state_shardings


@pytest.fixture(scope="module")
def encoder():
    config = common.base_config()
    config.model.widths, config.model.dense = (8, 16), (32,)
    model = build_model(config.model, (8, 8, 1), seed=0)
    graphdef, state = init_state(model, optax.identity(), 0)
    images = np.random.default_rng(0).integers(0, 17, (100, 8, 8, 1)).astype(np.uint8)
    return config, graphdef, state, images


def test_features_are_encoded_over_every_device_of_the_mesh():
    """100 rows in batches of 20 (rounded up to 24 on 8 devices, the last padded): each call sees its rows
    split over the 8 devices, and the outputs are those of one device, up to float round-off."""
    images = np.random.default_rng(0).integers(0, 17, (100, 8, 8, 1)).astype(np.uint8)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(64, 32)), jnp.float32)
    encode, seen = jax.jit(lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ weights)), []

    def fn(chunk):
        seen.append(chunk.sharding)
        return encode(chunk.astype(jnp.float32) / 16.0)

    sharded = evaluators.batched(fn, images, 20, make_mesh(8))
    assert [s.num_devices for s in seen] == [8] * 5 and all(isinstance(s, NamedSharding) for s in seen)
    assert {s.spec for s in seen} == {P("data")}
    one = evaluators.batched(fn, images, 20, make_mesh(1))
    plain = evaluators.batched(lambda c: encode(c.astype(np.float32) / 16.0), images, 20)
    assert sharded.shape == one.shape == plain.shape == (100, 32)
    # 64-term float32 dot products of size ~8, summed in another order on 8 devices: ~1e-6 apart (1.7e-6 seen)
    np.testing.assert_allclose(sharded, one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_eval_context_encodes_on_the_mesh_of_the_train_state(encoder):
    config, graphdef, state, images = encoder
    config.eval.batch_size = 32
    mesh = make_mesh(8)
    placed = jax.device_put(state, state_shardings(state, mesh))

    def context(s):
        return evaluators.EvalContext(config=config, graphdef=graphdef, state=s, family="views", pixel_max=16.0,
                                      train={"image": images, "label": np.arange(100) % 10}, load_test=dict,
                                      build_model=None, encode=make_encode_fn(graphdef))

    on_mesh = context(placed)
    assert on_mesh.mesh is mesh or on_mesh.mesh == mesh
    config.num_devices = 1
    unplaced = context(state)
    assert unplaced.mesh.devices.size == 1  # no mesh on the state: one over config.num_devices
    np.testing.assert_allclose(on_mesh.features("learned", "train"), unplaced.features("learned", "train"),
                               rtol=1e-5, atol=1e-6)
    pixels = on_mesh.features("raw_pixels", "train")
    np.testing.assert_array_equal(pixels, images.reshape(100, -1).astype(np.float32) / np.float32(16.0))


@pytest.mark.slow
def test_both_linear_solvers_and_both_knn_paths_agree_on_digits(digits_halves):
    """The digits take the full-batch path under `auto`; forced to mini-batches, or with a threshold below
    their size, the probe is within 2 points of it; kNN's streamed bank gives the same accuracy."""
    seed, knn = 0, {"knn_k": 200, "knn_temperature": 0.07}
    small = evaluators.probe_features(seed, *digits_halves, **knn)
    assert small["linear_solver"] == "lbfgs"
    minibatch = {"minibatch_size": 128, "minibatch_epochs": 50, "minibatch_learning_rate": 0.03}
    forced = evaluators.probe_features(seed, *digits_halves, **knn, linear_solver="minibatch", **minibatch)
    by_size = evaluators.probe_features(seed, *digits_halves, **knn, full_batch_max_elements=1000, knn_bank_block=100,
                                        **minibatch)
    assert forced["linear_solver"] == by_size["linear_solver"] == "minibatch"
    print(f"digits halves linear probe: L-BFGS {small['linear_probe']:.4f} (l2 {small['linear_probe_l2']:g}), "
          f"mini-batch {forced['linear_probe']:.4f} (l2 {forced['linear_probe_l2']:g})")
    assert abs(forced["linear_probe"] - small["linear_probe"]) <= 0.02
    assert forced["linear_probe"] == by_size["linear_probe"]
    assert by_size["knn"] == small["knn"] == forced["knn"]
    for key in ("ridge_probe", "mean_classifier", "uniformity", "tolerance"):
        assert by_size[key] == small[key]


def test_a_one_value_l2_grid_is_used_directly_by_both_solvers(digits_halves):
    """`linear_probe_l2_grid=(l2,)`: both solvers fit that penalty on all of train (no held-out part), so a
    penalty far too large for these features scores below the default grid's choice."""
    knn, minibatch = {"knn_k": 20, "knn_temperature": 0.07}, {"minibatch_size": 128, "minibatch_epochs": 5}
    default = evaluators.probe_features(0, *digits_halves, **knn)
    for solver in ("lbfgs", "minibatch"):
        fixed = evaluators.probe_features(0, *digits_halves, **knn, linear_solver=solver, **minibatch,
                                          linear_probe_l2_grid=(30.0,))
        assert fixed["linear_probe_l2"] == 30.0 and fixed["linear_solver"] == solver
        assert fixed["linear_probe"] < default["linear_probe"] - 0.05, (solver, fixed, default)


@pytest.mark.parametrize("field, value", [("linear_solver", "newton"), ("full_batch_max_elements", 0),
                                          ("minibatch_size", 0), ("minibatch_epochs", 0),
                                          ("minibatch_learning_rate", 0.0), ("knn_bank_block", -1),
                                          ("knn_query_block", 0), ("linear_probe_l2_grid", ()),
                                          ("linear_probe_l2_grid", (0.1, -1.0))])
def test_bad_probe_options_are_refused_by_name(field, value):
    config = common.base_config()
    config.evals.probes[field] = value
    with pytest.raises(ConfigError, match=f"evals.probes.{field}"):
        evaluators.entries(config, "views")
