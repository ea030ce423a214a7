"""Input pipeline: deterministic global batches, each process reading only its own rows.

The batch of step `s` is a pure function of (dataset, seed, s): examples are shuffled anew every epoch and
cut into global batches of B rows. A process of a P-process job reads rows
[p * B/P, (p+1) * B/P) of every global batch and hands them to `jax.make_array_from_process_local_data`,
so the global array, sharded over the mesh's `data` axis, is the same whatever P is. Because a batch
depends only on `s`, the data position is the train step, which is in every checkpoint: resuming at step
`s` reads exactly the batches an uninterrupted run would have read.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive.data import datasets

Batch = dict[str, np.ndarray]


def data_source(name: str, split: str, data_dir: str):
    """A random-access source of examples (dicts of NumPy arrays) of split `split` of dataset `name`
    (`contrastive.data.datasets`: `digits` is prepared from scikit-learn on first use; a TFDS name needs
    the dataset prepared in array_record format under `data_dir`)."""
    return datasets.get_dataset(name).source(split, data_dir)


def max_pixel_value(name: str) -> float:
    """The largest pixel value of a dataset's stored images: 16 for the digits sets, 255 for 8-bit images."""
    return datasets.get_dataset(name).pixel_max


def read_all(source, keys: tuple[str, ...] = ("image", "label", "index")) -> Batch:
    """Every example of a (small) source stacked into arrays, in index order."""
    rows = [source[i] for i in range(len(source))]
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}


class InMemorySource:
    """A random-access source over arrays already in memory.

    Decoding a TFDS record costs about half a millisecond in Python; a small dataset read once into
    memory serves batches a hundred times faster.
    """

    def __init__(self, arrays: Batch):
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays have different lengths: { {k: len(v) for k, v in arrays.items()} }")
        self.arrays = arrays
        self._len = lengths.pop()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.arrays.items()}


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n examples (NumPy's PCG64, stable across versions)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class GlobalBatches:
    """Global batch `step` of a dataset shuffled anew every epoch, as a sharded jax.Array dict.

    The examples are visited as one endless stream, epoch after epoch, each epoch in its own
    permutation; global batch s is positions [s*B, (s+1)*B) of that stream, so a batch may straddle two
    epochs and no example is dropped.

    Args:
      source: random-access source (e.g. from `data_source`, or an `InMemorySource`).
      global_batch_size: B, rows per step over all processes and devices.
      seed: shuffling seed.
      mesh: the device mesh; the batch is sharded along its `data` axis.
      keys: example fields to keep.
      prefetch: how many upcoming batches a background thread reads ahead.
    """

    def __init__(self, source, *, global_batch_size: int, seed: int, mesh: jax.sharding.Mesh,
                 keys: tuple[str, ...] = ("image", "label", "index"), prefetch: int = 2):
        num_processes = jax.process_count()
        if global_batch_size % num_processes:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the "
                             f"{num_processes} processes of this job")
        if global_batch_size > len(source):
            raise ValueError(f"global_batch_size={global_batch_size} exceeds the {len(source)} "
                             "examples of the dataset")
        self.source = source
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.sharding = NamedSharding(mesh, P("data"))
        self._keys = keys
        self._prefetch = prefetch
        local = global_batch_size // num_processes
        self._permutations: dict[int, np.ndarray] = {}
        self._rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            # A batch spans at most two epochs: keep the current and the next one.
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = epoch_permutation(self.seed, epoch, len(self.source))
        return self._permutations[epoch]

    def example_indices(self, step: int) -> np.ndarray:
        """Dataset indices of this process's rows of global batch `step`."""
        n = len(self.source)
        positions = np.arange(step * self.global_batch_size, (step + 1) * self.global_batch_size)
        positions = positions[self._rows]
        epochs, offsets = np.divmod(positions, n)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            hit = epochs == epoch
            out[hit] = self._permutation(int(epoch))[offsets[hit]]
        return out

    def local_batch(self, step: int) -> Batch:
        """This process's rows of global batch `step`, as NumPy arrays. Its `index` is each example's
        position in the source, 0 .. len(source) - 1 (the row of a per-sample state table), whatever
        index field the dataset stores."""
        idx = self.example_indices(step)
        keys = [k for k in self._keys if k != "index"]
        if isinstance(self.source, InMemorySource):
            out = {k: self.source.arrays[k][idx] for k in keys}
        else:
            rows = [self.source[int(i)] for i in idx]
            out = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}
        if "index" in self._keys:
            out["index"] = idx.astype(np.int32)
        return {k: out[k] for k in self._keys}

    def to_global(self, local: Batch) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in local.items()}

    def iterate(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        """Global batches start_step, start_step+1, ..., read ahead by a background thread."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = collections.deque(pool.submit(self.local_batch, start_step + i)
                                        for i in range(self._prefetch))
            step = start_step + self._prefetch
            while True:
                batch = pending.popleft().result()
                pending.append(pool.submit(self.local_batch, step))
                step += 1
                yield self.to_global(batch)
