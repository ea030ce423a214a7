"""The dual encoder: shapes, unit-norm outputs, logit scale/bias initialisation, masking, LiT locking."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import common
from contrastive.data.augment import AugmentConfig
from contrastive.models.dual import build_dual_encoder, lit_param_labels, lock_image_tower
from contrastive.models.text import TextTransformer
from contrastive.parallel.mesh import make_mesh
from contrastive.train.objectives import make_image_text_objective
from contrastive.train.step import init_state, make_image_text_step

VOCAB, LEN = 30, 8


def model_config(loss="clip", lock=False):
    c = common.image_text_config(loss).model
    c.widths, c.dense, c.head_hidden, c.projection_dim = (8, 16), (32,), (16,), 8
    c.text.width, c.text.depth, c.text.num_heads, c.text.max_len = 16, 1, 2, LEN
    c.lit.lock_image = lock
    return c


def tokens(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, LEN, batch)
    out = np.zeros((batch, LEN), np.int32)
    for i, n in enumerate(lengths):
        out[i, :n] = rng.integers(3, VOCAB, n)
        out[i, n] = 1  # EOS
    return jnp.asarray(out)


def test_shapes_and_unit_norm_outputs():
    model = build_dual_encoder(model_config(), (8, 8, 1), VOCAB, seed=0, with_bias=False)
    # One compiled program instead of one eager dispatch per op (much faster on CPU).
    image, text = nnx.jit(lambda m, x, t: m(x, t))(model, jnp.ones((4, 8, 8, 1)), tokens())
    assert image.shape == text.shape == (4, 8)
    np.testing.assert_allclose(jnp.linalg.norm(image, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)
    features = nnx.jit(lambda m, x: m.encode(x))(model, jnp.ones((4, 8, 8, 1)))
    assert features.shape == (4, 32)  # image features for the probes


@pytest.mark.parametrize("loss, scale, bias", [("clip", 1 / 0.07, None), ("infoloob", 1 / 0.07, None),
                                               ("siglip", 10.0, -10.0)])
def test_logit_scale_and_bias_start_as_in_the_papers(loss, scale, bias):
    model = build_dual_encoder(model_config(loss), (8, 8, 1), VOCAB, seed=0, with_bias=loss == "siglip")
    t, b = model.logit_scale_and_bias()
    np.testing.assert_allclose(t, scale, rtol=1e-5)
    assert (b is None) == (bias is None) and (b is None or float(b) == bias)
    model.logit_scale[...] = jnp.asarray(math.log(1e4))
    assert float(model.logit_scale_and_bias()[0]) == pytest.approx(100.0)  # clipped at t_max


@pytest.mark.parametrize("pool", ["eos", "mean"])
def test_padding_does_not_change_the_text_features(pool):
    transformer = TextTransformer(VOCAB, 16, width=16, depth=2, num_heads=2, pool=pool, rngs=nnx.Rngs(0))
    short = tokens()
    longer = jnp.concatenate([short, jnp.zeros((4, 8), jnp.int32)], axis=1)
    run = nnx.jit(lambda m, t: m(t))
    np.testing.assert_allclose(run(transformer, short), run(transformer, longer), rtol=1e-4, atol=1e-5)


def test_lit_locks_the_image_encoder_and_trains_the_rest():
    """Zeroed updates keep the image encoder bit-identical under AdamW with weight decay, while the text
    tower, the image head and the logit scale move."""
    mesh = make_mesh(1)
    model = build_dual_encoder(model_config(lock=True), (8, 8, 1), VOCAB, seed=0, with_bias=False)
    tx = lock_image_tower(optax.adamw(1e-2, weight_decay=0.5))
    graphdef, state = init_state(model, tx, seed=0)
    before = jax.tree.map(np.array, state.params)
    step = make_image_text_step(graphdef, tx, make_image_text_objective(ml_collections.ConfigDict({"name": "clip"})),
                                AugmentConfig(num_views=1), mesh, max_pixel_value=16.0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 17, (8, 8, 8, 1)).astype(np.uint8),
             "tokens": np.stack([tokens(8, seed=s) for s in range(2)], axis=1), "num_captions": np.full(8, 2, np.int32)}
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    for _ in range(3):
        state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    labels = lit_param_labels(state.params)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, jax.tree.map(np.array, state.params))
    flat = {jax.tree_util.keystr(p): (lab, m) for (p, lab), (_, m) in
            zip(jax.tree_util.tree_leaves_with_path(labels), jax.tree_util.tree_leaves_with_path(moved))}
    locked = [m for lab, m in flat.values() if lab == "locked"]
    assert locked and not any(locked)
    assert all(m for k, (lab, m) in flat.items() if k.startswith("['text']") and "kernel" in k)
    assert any(m for k, (lab, m) in flat.items() if k.startswith("['image']['head']"))
    assert flat["['logit_scale'].value"][1]
