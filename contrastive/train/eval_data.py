"""Evaluation splits read from their data source one evaluation batch at a time, never whole.

An `EvalSplit` wraps a split's random-access source (`pipeline.ImageExamples`, a `CaptionedSource`, or an
`InMemorySource` where `data.in_memory` already holds the split). `map(fn, mesh)` runs `fn` over the split
in batches of `batch_size` rows (rounded up to a multiple of the mesh's `data` axis, the last batch padded
with zeros, so one shape compiles once). Each batch is one global array sharded over the `data` axis, and
a process reads from the source only the rows of it that its own devices hold (those of
`sharding.addressable_devices_indices_map`), with `num_workers` threads: the same cut the training
pipeline makes of a global batch. `fn`'s [B, ...] outputs are gathered to every process
(`multihost_utils.process_allgather`) and concatenated, in row order: every process ends with the same
[N, ...] outputs, equal to those of a one-process run.

Host memory per process: one batch of its own rows of images (B / P rows of P processes) and the
gathered outputs. The split's small per-example fields (`small_keys`: labels, caption tokens) are read
once, during the first pass over the split (or by a pass of their own when asked for first), gathered
the same way and kept; `split[key]` returns them whole. The images are never returned whole.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive.data import pipeline
from contrastive.parallel.mesh import DATA_AXIS, make_mesh

IMAGE = "image"
ROW = "row"  # each batch row's position in the split (an int32 global array beside the images)


def local_rows(sharding: NamedSharding, batch_rows: int, devices=None) -> np.ndarray:
    """Sorted positions in [0, batch_rows) of a [batch_rows, ...] array under `sharding` held by `devices`
    (default: this process's devices)."""
    index_map = sharding.devices_indices_map((batch_rows,))
    devices = set(sharding.addressable_devices if devices is None else devices)
    rows: set[int] = set()
    for device, index in index_map.items():
        if device in devices:
            rows.update(range(*index[0].indices(batch_rows)))
    return np.array(sorted(rows), np.int64)


def padded_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's `data` axis."""
    size = mesh.shape[DATA_AXIS]
    return -(-batch_size // size) * size


def to_host(array: jax.Array) -> np.ndarray:
    """A global array as a host array of all its rows, on every process."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _device_dtype(value: np.ndarray) -> np.ndarray:
    """int64 fields (labels, indices) as int32 for the devices (jax without x64 has no int64)."""
    if value.dtype == np.int64:
        if value.size and (value.min() < np.iinfo(np.int32).min or value.max() > np.iinfo(np.int32).max):
            raise ValueError(f"an evaluation field holds {value.min()} .. {value.max()}, outside int32")
        return value.astype(np.int32)
    return value


class EvalSplit:
    """A split for evaluation: its images streamed in sharded batches, its small fields read once.

    Args:
      source: random-access source of example dicts (`len`, `source[i]`).
      small_keys: the per-example fields kept whole (e.g. ('label',)); `split[key]` returns them.
      batch_size: rows per evaluation batch (`eval.batch_size`).
      num_workers: threads reading a batch's rows.
      labelled: whether the labels are classes (`ImageExamples.labelled`; the source's when it says).
      mesh: the mesh of a pass that reads only the small fields (`map` takes its own); default: every device.
    """

    def __init__(self, source, *, small_keys: tuple[str, ...] = ("label",), batch_size: int = 512,
                 num_workers: int = 1, labelled: bool | None = None, mesh: jax.sharding.Mesh | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        self.source, self.small_keys, self.batch_size, self.mesh = source, tuple(small_keys), batch_size, mesh
        self.num_workers = 1 if isinstance(source, pipeline.InMemorySource) else num_workers
        self.labelled = getattr(source, "labelled", True) if labelled is None else labelled
        self._small: dict[str, np.ndarray] | None = None
        self._layout: dict = {}  # {field: (shape, dtype)} of one example, from the first rows read

    @classmethod
    def of_arrays(cls, arrays: dict, **kwargs) -> EvalSplit:
        """A split of arrays already in memory (every field but `image` kept as a small field)."""
        kwargs.setdefault("small_keys", tuple(k for k in arrays if k != IMAGE))
        return cls(pipeline.InMemorySource(dict(arrays)), **kwargs)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: str) -> np.ndarray:
        if key == IMAGE:
            raise KeyError("an evaluation split's images are streamed, never held whole: use EvalSplit.map "
                           "(EvalContext.map_images)")
        if key not in self.small_keys:
            raise KeyError(f"{key!r} is not one of this split's small fields {self.small_keys}")
        if self._small is None:
            if isinstance(self.source, pipeline.InMemorySource):
                self._small = {k: self.source.arrays[k] for k in self.small_keys}
            else:  # a pass of its own that reads no image into a batch (the source may still decode them)
                self._small = self._pass(None, self._mesh(None), keys=self.small_keys)[1]
        return self._small[key]

    def map(self, fn, mesh: jax.sharding.Mesh | None = None):
        """fn({'image': [B, ...] uint8, 'row': [B] int32}) over the split's batches (global arrays sharded
        over `mesh`'s `data` axis; rows past the end are zeros, with `row` >= N) -> its outputs (a pytree of
        [B, ...] arrays) over every row, gathered to every process as host arrays [N, ...]."""
        keys = (IMAGE,) if self._small is not None or isinstance(self.source, pipeline.InMemorySource) \
            else (IMAGE, *self.small_keys)
        out, small = self._pass(fn, self._mesh(mesh), keys=keys)
        if self._small is None and small:
            self._small = small
        return out

    def _mesh(self, mesh):
        return mesh if mesh is not None else self.mesh if self.mesh is not None else make_mesh()

    def _pass(self, fn, mesh, *, keys: tuple[str, ...]):
        """(fn's gathered outputs or None, the gathered small fields among `keys`)."""
        batch = padded_batch_size(self.batch_size, mesh)
        sharding = NamedSharding(mesh, P(DATA_AXIS))
        mine = local_rows(sharding, batch)
        outputs, small = [], {k: [] for k in keys if k != IMAGE}
        n = len(self)
        for start in range(0, n, batch):
            valid = min(batch, n - start)
            local = self._read(start + mine[mine < valid], keys, len(mine))
            local[ROW] = (start + mine).astype(np.int32)
            arrays = {k: self._global(v, sharding, batch, mine) for k, v in local.items()}
            for k in small:
                small[k].append(to_host(arrays[k])[:valid])
            if fn is not None:
                result = fn({k: arrays[k] for k in (IMAGE, ROW) if k in arrays})
                outputs.append(jax.tree.map(lambda a, v=valid: to_host(a)[:v], result))
            del local, arrays  # this batch's images: released before the next is read
        gathered = None
        if fn is not None:
            gathered = jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
        small = {k: np.concatenate(v).astype(self._layout[k][1], copy=False) for k, v in small.items()}
        return gathered, small

    def _read(self, rows: np.ndarray, keys, count: int) -> dict:
        """This process's `count` rows of a batch: source[rows] then zeros (rows past the split's end)."""
        read = pipeline.read_rows(self.source, rows, keys, self.num_workers) if len(rows) else None
        if any(k not in self._layout for k in keys):  # from this process's first row (row 0 if it has none)
            example = {k: v[0] for k, v in read.items()} if read else self.source[0]
            self._layout.update({k: (np.shape(example[k]), np.asarray(example[k]).dtype) for k in keys})
        out = {k: np.zeros((count, *self._layout[k][0]), self._layout[k][1]) for k in keys}
        if read is not None:
            for k in keys:
                out[k][:len(rows)] = read[k]
        return {k: _device_dtype(v) for k, v in out.items()}

    @staticmethod
    def _global(local: np.ndarray, sharding: NamedSharding, batch: int, mine: np.ndarray) -> jax.Array:
        """The [batch, ...] global array whose rows `mine` are `local` (this process's part)."""

        def shard(index):
            wanted = np.arange(*index[0].indices(batch))
            return local[np.searchsorted(mine, wanted)]

        return jax.make_array_from_callback((batch, *local.shape[1:]), sharding, shard)
