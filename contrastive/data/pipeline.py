"""Input pipeline: host-side image examples, and deterministic global batches read by parallel workers.

Host transform (`ImageExamples`): the views family's examples {image, label, index}, every image one fixed
shape. TFDS decodes an image when its record is read (PIL or OpenCV); with `data.image_size` = (H, W) it is
then fitted to (H, W) by `resize_image`. Random crops, flips and colour happen later, on device.

Batches (`GlobalBatches`): the batch of step `s` is a pure function of (dataset, seed, s): examples are
shuffled anew every epoch and cut into global batches of B rows. A process of a P-process job reads rows
[p * B/P, (p+1) * B/P) of every global batch and hands them to `jax.make_array_from_process_local_data`,
so the global array, sharded over the mesh's `data` axis, is the same whatever P is. Because a batch
depends only on `s`, the data position is the train step, which is in every checkpoint: resuming at step
`s` reads exactly the batches an uninterrupted run would have read. `num_workers` threads read and decode
the rows of the next `prefetch` batches (decoding and resizing run in C with the GIL released) and one
more thread puts each finished batch on the devices; each worker writes its rows into their fixed places
of the batch, so the batch is the same for any number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive import checks
from contrastive.data import datasets

Batch = dict[str, np.ndarray]

IMAGE_SIZE = checks.Rule(lambda v: len(v) == 0 or (len(v) == 2 and all(isinstance(s, int) and s > 0 for s in v)),
                         "{field} must be () (keep the stored size) or (H, W) of positive ints, got {value!r}")
# `config.data` fields read here; the runner checks them before any compute.
RULES = {"image_size": IMAGE_SIZE, "num_workers": checks.NON_NEGATIVE, "prefetch": checks.AT_LEAST_ONE}


def data_source(name: str, split: str, data_dir: str):
    """A random-access source of raw examples (dicts of NumPy arrays) of split `split` of dataset `name`
    (`contrastive.data.datasets`: `digits` is prepared from scikit-learn on first use; a TFDS name needs
    the dataset prepared in array_record format under `data_dir`)."""
    return datasets.get_dataset(name).source(split, data_dir)


def max_pixel_value(name: str) -> float:
    """The largest pixel value of a dataset's stored images: 16 for the digits sets, 255 for 8-bit images."""
    return datasets.get_dataset(name).pixel_max


def worker_count(num_workers: int) -> int:
    """`data.num_workers`, with 0 meaning one per CPU core of this host."""
    return num_workers or os.cpu_count() or 1


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """A uint8 [h, w, C] image fitted to `size` = (H, W): scaled (bilinear, antialiased when shrinking) by
    s = max(H / h, W / w), so that its shorter side (relative to the target's aspect ratio) fills the
    target, then its centre H x W cropped: the standard evaluation transform of ImageNet models (He et al.
    2016; here without the 0.875 margin). An image of the target's aspect ratio is only resized; one of the
    target's size is returned as is. PIL's `ImageOps.fit` crops and resamples in one pass."""
    size = tuple(int(s) for s in size)
    if image.shape[:2] == size:
        return image
    if image.dtype != np.uint8:
        raise ValueError(f"resize_image takes uint8 images, got {image.dtype}")
    from PIL import Image, ImageOps

    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(ImageOps.fit(pil, (size[1], size[0]), method=Image.BILINEAR), np.uint8)
    return out.reshape(*size, channels)


def stored_image_shape(source) -> tuple | None:
    """The TFDS `image` feature's shape of a raw source ((None, None, 3) when the sizes vary), or None when
    the source does not say."""
    info = getattr(source, "dataset_info", None)
    features = getattr(info, "features", None)
    try:
        return tuple(features["image"].shape)
    except (TypeError, KeyError, AttributeError):
        return None


class ImageExamples:
    """The examples {image uint8 [H, W, C], label, index} of split `split` of a views-family dataset.

    `index` is the example's position in the split; `label` is the spec's label, -1 where the dataset has
    none. With `image_size` every image is fitted to it (`resize_image`); without it, a dataset whose
    stored images vary in size is refused (a batch needs one shape).
    """

    def __init__(self, raw, spec: datasets.DatasetSpec, split: str, image_size=None):
        self.raw, self.spec, self.split = raw, spec, split
        self.image_size = tuple(image_size) if image_size else None
        stored = stored_image_shape(raw)
        if self.image_size is None and stored is not None and None in stored[:2]:
            first = np.asarray(raw[0]["image"]).shape
            raise ValueError(f"config.data.image_size=() keeps the stored size, but the images of data.name="
                             f"{spec.name!r} vary in size (feature shape {stored}, the first is {first}); "
                             f"set config.data.image_size=(H, W), e.g. (224, 224)")

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def labelled(self) -> bool:
        """Whether this split has class labels (not one of the spec's `unlabelled_splits`, and a `label`
        feature, or a label >= 0 on its first example where the source does not list its features)."""
        if self.split in self.spec.unlabelled_splits:
            return False
        features = getattr(getattr(self.raw, "dataset_info", None), "features", None)
        if features is not None and self.spec.label is datasets.label_field:
            return "label" in features
        return self.spec.label(self.raw[0]) >= 0

    def __getitem__(self, i: int) -> dict:
        example = self.raw[int(i)]
        image = np.asarray(example["image"])
        if image.ndim == 2:
            image = image[..., None]
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
        return {"image": image, "label": np.int64(self.spec.label(example)), "index": np.int64(i)}


class InMemorySource:
    """A random-access source over arrays already in memory.

    Decoding a TFDS record costs about half a millisecond in Python; a small dataset read once into
    memory serves batches a hundred times faster. `labelled`: whether the labels are classes (that of the
    source it was read from, `ImageExamples.labelled`).
    """

    def __init__(self, arrays: Batch, labelled: bool = True):
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays have different lengths: { {k: len(v) for k, v in arrays.items()} }")
        self.arrays, self.labelled = arrays, labelled
        self._len = lengths.pop()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.arrays.items()}


def _layout(example, keys) -> dict:
    """{key: (shape, dtype)} of one example's fields."""
    return {k: (np.shape(example[k]), np.asarray(example[k]).dtype) for k in keys}


def _start_read(source, idx: np.ndarray, layout: dict, pool, workers: int):
    """Empty arrays for rows source[idx[0]], source[idx[1]], ... (fields and shapes from `layout`) and the
    futures of `workers` tasks of `pool` that fill them, each its own contiguous rows; with `pool` None the
    rows are read here."""
    out = {k: np.empty((len(idx), *shape), dtype) for k, (shape, dtype) in layout.items()}

    def fill(rows):
        for r in rows:
            example = source[int(idx[r])]
            for k, array in out.items():
                value = np.asarray(example[k])
                if value.shape != array.shape[1:]:
                    raise ValueError(f"example {int(idx[r])} has {k} of shape {value.shape}, unlike the first "
                                     f"example's {array.shape[1:]}: a batch needs one shape (config.data.image_size "
                                     "fits every image to one)")
                array[r] = value

    chunks = np.array_split(np.arange(len(idx)), max(1, min(workers, len(idx))))
    if pool is None:
        for rows in chunks:
            fill(rows)
        return out, []
    return out, [pool.submit(fill, rows) for rows in chunks]


def read_rows(source, idx, keys, num_workers: int = 1) -> Batch:
    """source[i] for i in `idx`, stacked into arrays of `keys`, read by `num_workers` threads."""
    idx = np.asarray(idx)
    layout = _layout(source[int(idx[0])], keys)
    if num_workers <= 1 or len(idx) < 2:
        return _start_read(source, idx, layout, None, 1)[0]
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        out, futures = _start_read(source, idx, layout, pool, num_workers)
        for f in futures:
            f.result()
    return out


def read_all(source, keys: tuple[str, ...] = ("image", "label", "index"), num_workers: int = 1) -> Batch:
    """Every example of a (small) source stacked into arrays, in index order."""
    if isinstance(source, InMemorySource):
        return {k: source.arrays[k] for k in keys}
    return read_rows(source, np.arange(len(source)), keys, num_workers)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n examples (NumPy's PCG64, stable across versions)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class GlobalBatches:
    """Global batch `step` of a dataset shuffled anew every epoch, as a sharded jax.Array dict.

    The examples are visited as one endless stream, epoch after epoch, each epoch in its own
    permutation; global batch s is positions [s*B, (s+1)*B) of that stream, so a batch may straddle two
    epochs and no example is dropped.

    Args:
      source: random-access source (e.g. `ImageExamples`, or an `InMemorySource`).
      global_batch_size: B, rows per step over all processes and devices.
      seed: shuffling seed.
      mesh: the device mesh; the batch is sharded along its `data` axis.
      keys: example fields to keep.
      prefetch: how many upcoming batches are read ahead while a step runs (>= 1).
      num_workers: threads reading and decoding examples (an in-memory source needs none: one copies).
    """

    def __init__(self, source, *, global_batch_size: int, seed: int, mesh: jax.sharding.Mesh,
                 keys: tuple[str, ...] = ("image", "label", "index"), prefetch: int = 2, num_workers: int = 1):
        num_processes = jax.process_count()
        if global_batch_size % num_processes:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the "
                             f"{num_processes} processes of this job")
        if global_batch_size > len(source):
            raise ValueError(f"global_batch_size={global_batch_size} exceeds the {len(source)} "
                             "examples of the dataset")
        if prefetch < 1 or num_workers < 1:
            raise ValueError(f"prefetch={prefetch} and num_workers={num_workers} must be >= 1")
        self.source = source
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.sharding = NamedSharding(mesh, P("data"))
        self._keys = keys
        self._prefetch = prefetch
        self.num_workers = 1 if isinstance(source, InMemorySource) else num_workers
        local = global_batch_size // num_processes
        self._permutations: dict[int, np.ndarray] = {}
        self._layout = None  # fields, shapes and dtypes of the source's first example, read on first use
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

    def _start(self, step: int, pool):
        """(idx, arrays, futures) of this process's rows of batch `step`, the reads handed to `pool`."""
        idx = self.example_indices(step)
        keys = [k for k in self._keys if k != "index"]
        if isinstance(self.source, InMemorySource):
            return idx, {k: self.source.arrays[k][idx] for k in keys}, []
        if self._layout is None:
            self._layout = _layout(self.source[0], keys)
        return idx, *_start_read(self.source, idx, self._layout, pool, self.num_workers)

    def _finish(self, idx: np.ndarray, arrays: Batch) -> Batch:
        out = dict(arrays)
        if "index" in self._keys:
            out["index"] = idx.astype(np.int32)
        return {k: out[k] for k in self._keys}

    def local_batch(self, step: int) -> Batch:
        """This process's rows of global batch `step`, as NumPy arrays. Its `index` is each example's
        position in the source, 0 .. len(source) - 1 (the row of a per-sample state table), whatever
        index field the dataset stores."""
        if self.num_workers == 1:
            idx, arrays, _ = self._start(step, None)
            return self._finish(idx, arrays)
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
            idx, arrays, futures = self._start(step, pool)
            for f in futures:
                f.result()
        return self._finish(idx, arrays)

    def to_global(self, local: Batch) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in local.items()}

    def _assemble(self, idx: np.ndarray, arrays: Batch, futures) -> dict[str, jax.Array]:
        for f in futures:
            f.result()
        return self.to_global(self._finish(idx, arrays))

    def iterate(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        """Global batches start_step, start_step+1, ...: while the caller holds one, the next `prefetch` are
        being read by the workers (in step order: a worker takes the oldest pending rows) and put on the
        devices by one more thread, so that `next` returns device arrays that are ready."""
        in_memory = isinstance(self.source, InMemorySource)
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as workers, \
                concurrent.futures.ThreadPoolExecutor(1) as stage:
            def start(step):
                if in_memory:  # a copy of the rows: the stage thread does it all
                    return stage.submit(lambda: self._assemble(*self._start(step, None)))
                return stage.submit(self._assemble, *self._start(step, workers))

            pending = collections.deque(start(start_step + i) for i in range(self._prefetch))
            step = start_step + self._prefetch
            while True:
                batch = pending.popleft().result()
                pending.append(start(step))
                step += 1
                yield batch
