"""Evaluation splits are streamed: no process reads a whole split of images, each reads only its rows.

A source that records every row it is asked for shows, over one pass of `EvalSplit.map`, which rows were
read between two calls of the encoder (one batch: at most `eval.batch_size` rows, the rows of that batch
alone), that the labels come with the same pass, and, in a real 2-process job (jax.distributed over
gloo), that each process read only the rows its devices hold while both got every row's features, equal
to those of one process.
"""

import json
import pathlib
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive.launch import child_env, free_port
from contrastive.parallel.mesh import make_mesh
from contrastive.train import eval_data, evaluators
from contrastive.train.config import ConfigError
from contrastive.train.runner import train_and_evaluate

N, BATCH, DIM = 45, 10, 8


def images_and_labels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 4, 4, 1)).astype(np.uint8), (np.arange(N) % 7).astype(np.int64)


class RecordingSource:
    """`source[i]` of in-memory arrays that logs each row asked for (and `mark()`s between batches)."""

    def __init__(self, images, labels):
        self.images, self.labels, self.log, self._lock = images, labels, [], threading.Lock()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        with self._lock:
            self.log.append(int(i))
        return {"image": self.images[i], "label": self.labels[i], "index": np.int64(i)}

    def mark(self):
        with self._lock:
            self.log.append(None)

    def batches(self):
        """The distinct rows read before each mark (one set per encoded batch), and any read after the last."""
        groups, current = [], set()
        for entry in self.log:
            if entry is None:
                groups.append(current)
                current = set()
            else:
                current.add(entry)
        return groups, current


def encoder():
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(16, DIM)), jnp.float32)
    return jax.jit(lambda x: jnp.tanh(x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0 @ weights))


def stream(source, mesh):
    """(features, labels) of one pass of `EvalSplit.map`, marking the source at each encoder call."""
    encode = encoder()
    split = eval_data.EvalSplit(source, small_keys=("label",), batch_size=BATCH, num_workers=2)

    def fn(batch):
        source.mark()
        return encode(batch["image"])

    features = split.map(fn, mesh)
    return features, split["label"]


def expected_rows(batch: int, mine: np.ndarray) -> list[set]:
    return [{s + int(r) for r in mine if s + r < N} for s in range(0, N, batch)]


def test_one_pass_reads_one_batch_of_rows_at_a_time_and_the_labels_with_it():
    """45 rows, eval.batch_size 10 on 8 devices (rounded up to 16): three batches, each read whole before
    its encoder call, never more than 16 distinct rows, every row once; the labels need no second pass."""
    images, labels = images_and_labels()
    source = RecordingSource(images, labels)
    features, got_labels = stream(source, make_mesh(8))
    groups, after = source.batches()
    assert groups == [set(range(0, 16)), set(range(16, 32)), set(range(32, 45))] and after == set()
    assert max(len(g) for g in groups) <= eval_data.padded_batch_size(BATCH, make_mesh(8))
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(features, encoder()(images), rtol=1e-6, atol=1e-6)
    assert features.shape == (N, DIM)


def test_images_are_never_returned_whole():
    split = eval_data.EvalSplit(RecordingSource(*images_and_labels()), small_keys=("label",), batch_size=BATCH)
    with pytest.raises(KeyError, match="streamed"):
        split["image"]


def test_each_process_holds_the_rows_of_its_devices():
    """The row cut of a fake 2-process split of 8 devices (4 each): disjoint halves of every batch, those
    the training pipeline gives process p of P, [p B/P, (p+1) B/P)."""
    mesh = make_mesh(8)
    sharding = NamedSharding(mesh, P("data"))
    devices = list(mesh.devices.flat)
    halves = [eval_data.local_rows(sharding, 16, devices[:4]), eval_data.local_rows(sharding, 16, devices[4:])]
    assert [h.tolist() for h in halves] == [list(range(8)), list(range(8, 16))]
    assert eval_data.local_rows(sharding, 16).tolist() == list(range(16))  # one process holds them all


WORKER = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, process_id, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", 2, process_id, initialization_timeout=120)
from contrastive.parallel.mesh import make_mesh
from tests.train.test_eval_streaming import RecordingSource, images_and_labels, stream
source = RecordingSource(*images_and_labels())
features, labels = stream(source, make_mesh())
groups, after = source.batches()
json.dump({"groups": [sorted(g) for g in groups], "after": sorted(after), "features": features.tolist(),
           "labels": labels.tolist()}, open(out, "w"))
"""


@pytest.mark.slow
def test_two_processes_each_read_only_their_rows_and_both_get_every_feature(tmp_path):
    """2 processes x 2 devices, batches of 12 rows (10 rounded up to 4 devices): process p reads rows
    [6p, 6p + 6) of each batch and nothing else, each batch before its encoder call; both end with the
    features and labels of all 45 rows, equal to this one process's."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    outs = [tmp_path / f"process_{i}.json" for i in range(2)]
    env = {**child_env(2), "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(outs[i])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    results = [json.loads(o.read_text()) for o in outs]
    images, labels = images_and_labels()
    for p, result in enumerate(results):
        want = expected_rows(12, np.arange(6 * p, 6 * p + 6))
        assert [set(g) for g in result["groups"]] == want and result["after"] == []
        np.testing.assert_allclose(result["features"], encoder()(images), rtol=1e-6, atol=1e-6)
        assert result["labels"] == labels.tolist()
    read = [set().union(*map(set, r["groups"])) for r in results]
    assert read[0].isdisjoint(read[1]) and read[0] | read[1] == set(range(N))


def test_raw_pixels_of_a_large_split_are_refused_before_the_workdir(tiny_config, tmp_path):
    config = tiny_config(**{"eval.at_end": True, "evals.probes.raw_pixels_max_elements": 1000})
    with pytest.raises(ConfigError, match="raw_pixels_max_elements=1,000"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # Without raw_pixels among the representations, or with the limit above the 1,352 x 64 train pixels, it passes.
    sizes = evaluators.SplitSizes(num_train=1352, num_test=445, image_shape=(8, 8, 1))
    for more in ({"evals.probes.representations": ("learned",)}, {"evals.probes.raw_pixels_max_elements": 1352 * 64}):
        config = tiny_config(**{"eval.at_end": True, "evals.probes.raw_pixels_max_elements": 1000, **more})
        evaluators.check_sizes(evaluators.entries(config, "views"), config, sizes)
    with pytest.raises(ConfigError, match="1353 x 64 = 86,592"):
        evaluators.check_sizes(evaluators.entries(config, "views"), config,
                               evaluators.SplitSizes(num_train=1352, num_test=1353, image_shape=(8, 8, 1)))
