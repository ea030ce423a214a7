import jax
import numpy as np
import pytest

from contrastive.data import pipeline
from contrastive.parallel.mesh import make_mesh


def source(n=50):
    return pipeline.InMemorySource({"image": np.arange(n)[:, None].repeat(4, 1).astype(np.uint8),
                                    "label": np.arange(n) % 10, "index": np.arange(n)})


def batches(seed=0, n=50, batch=16, devices=8):
    return pipeline.GlobalBatches(source(n), global_batch_size=batch, seed=seed, mesh=make_mesh(devices))


def test_every_example_once_per_epoch_and_new_order_each_epoch():
    b = batches()
    stream = np.concatenate([b.example_indices(s) for s in range(25)])  # 400 = 8 epochs of 50
    epochs = stream.reshape(8, 50)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(50))
    assert not np.array_equal(epochs[0], epochs[1])


def test_batches_depend_only_on_seed_and_step():
    a, b, c = batches(seed=1), batches(seed=1), batches(seed=2)
    for step in (0, 3, 7):
        np.testing.assert_array_equal(a.local_batch(step)["index"], b.local_batch(step)["index"])
    assert not np.array_equal(a.local_batch(0)["index"], c.local_batch(0)["index"])


def test_iterate_from_any_step_yields_sharded_global_batches():
    b = batches()
    it = b.iterate(5)
    for step in (5, 6, 7):
        batch = next(it)
        assert batch["image"].shape == (16, 4)
        assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
        assert len(batch["image"].sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(batch["index"]), b.local_batch(step)["index"])


def test_tfds_source_and_in_memory_source_give_the_same_batches(tmp_path):
    raw = pipeline.data_source("digits", "train", str(tmp_path))
    mem = pipeline.InMemorySource(pipeline.read_all(raw))
    mesh = make_mesh(1)
    a = pipeline.GlobalBatches(raw, global_batch_size=8, seed=0, mesh=mesh).local_batch(3)
    b = pipeline.GlobalBatches(mem, global_batch_size=8, seed=0, mesh=mesh).local_batch(3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bad_batch_sizes():
    with pytest.raises(ValueError, match="exceeds the 50 examples"):
        batches(batch=64)
    with pytest.raises(ValueError, match="different lengths"):
        pipeline.InMemorySource({"a": np.zeros(3), "b": np.zeros(4)})
