"""TFDS image datasets by name: the host resize, the parallel reader's determinism, labels and preparation.

TFDS data comes from `tfds.testing.mock_data` (random examples of the real feature specs: cifar10 32x32,
stl10 96x96, imagenette of random sizes), which serves `tfds.data_source` without TensorFlow.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from contrastive.data import datasets, pipeline
from contrastive.parallel.mesh import make_mesh


def mock(n):
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def examples(name, split, n=40, image_size=None):
    raw = pipeline.data_source(name, split, "/nonexistent")
    return pipeline.ImageExamples(raw, datasets.get_dataset(name), split, image_size)


def test_resize_fits_the_shorter_side_and_crops_the_centre():
    # A 20 x 40 image to 10 x 10: halved (shorter side 20 -> 10) to 10 x 20 and its middle 10 columns kept,
    # i.e. source columns 10..30; the band 6..34 covers them and the 2-pixel reach of the halving filter.
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 6:34] = 200
    image[:, 34:] = 100
    out = pipeline.resize_image(image, (10, 10))
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, 200)
    # Same aspect ratio: a plain resize (the mean brightness is kept); the same size: returned as is.
    gradient = np.tile(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (32, 1, 1))
    half = pipeline.resize_image(gradient, (16, 16))
    assert half.shape == (16, 16, 1) and abs(half.mean() - gradient.mean()) < 2
    assert pipeline.resize_image(gradient, (32, 32)) is gradient
    # A tall image: rows are cropped, not columns.
    tall = np.zeros((40, 20, 1), np.uint8)
    tall[6:34] = 50
    np.testing.assert_array_equal(pipeline.resize_image(tall, (10, 10)), 50)


def test_images_of_varying_size_are_fitted_to_image_size_and_refused_without_it():
    with mock(12):
        raw = pipeline.data_source("imagenette", "train", "/nonexistent")
        sizes = {np.asarray(raw[i]["image"]).shape for i in range(12)}
        assert len(sizes) > 1  # the mock images vary in size, as imagenette's do
        source = examples("imagenette", "train", image_size=(24, 20))
        for i in range(12):
            ex = source[i]
            assert ex["image"].shape == (24, 20, 3) and ex["image"].dtype == np.uint8 and ex["index"] == i
            np.testing.assert_array_equal(ex["image"], pipeline.resize_image(np.asarray(raw[i]["image"]), (24, 20)))
        with pytest.raises(ValueError, match=r"config.data.image_size=\(\) keeps the stored size, but the images "
                                             r"of data.name='imagenette' vary in size"):
            examples("imagenette", "train")
        # A fixed-size set keeps its size without image_size.
        assert examples("cifar10", "train")[0]["image"].shape == (32, 32, 3)


@pytest.mark.parametrize("in_memory", [False, True])
def test_the_batch_of_a_step_is_the_same_for_any_worker_count_and_prefetch(in_memory):
    mesh = make_mesh(8)
    with mock(50):
        source = examples("imagenette", "train", image_size=(8, 8))
        if in_memory:
            source = pipeline.InMemorySource(pipeline.read_all(source, num_workers=3))

        def stream(workers, prefetch, start, n):
            b = pipeline.GlobalBatches(source, global_batch_size=16, seed=3, mesh=mesh, num_workers=workers,
                                       prefetch=prefetch)
            it = b.iterate(start)
            return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)], b

        one, b = stream(1, 1, 0, 6)
        for workers, prefetch in ((4, 3), (16, 1)):
            many, _ = stream(workers, prefetch, 0, 6)
            resumed, _ = stream(workers, prefetch, 4, 2)  # a resume at step 4 reads steps 4 and 5 again
            for s in range(6):
                for k in one[s]:
                    np.testing.assert_array_equal(many[s][k], one[s][k])
            for k in one[4]:
                np.testing.assert_array_equal(resumed[0][k], one[4][k])
                np.testing.assert_array_equal(resumed[1][k], one[5][k])
        # Each row is the example its index names (50 examples, 16 a step: step 3 straddles two epochs).
        for s in (0, 3):
            for row, i in enumerate(one[s]["index"]):
                np.testing.assert_array_equal(one[s]["image"][row], source[int(i)]["image"])
                assert one[s]["label"][row] == source[int(i)]["label"]
            np.testing.assert_array_equal(one[s]["index"], b.local_batch(s)["index"])


def test_read_all_is_the_same_with_any_worker_count():
    with mock(30):
        source = examples("cifar10", "test")
        serial, parallel = pipeline.read_all(source), pipeline.read_all(source, num_workers=4)
    for k in ("image", "label", "index"):
        np.testing.assert_array_equal(serial[k], parallel[k])
    np.testing.assert_array_equal(serial["index"], np.arange(30))


def test_a_shape_that_changes_mid_batch_is_refused_naming_image_size():
    class Ragged:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"image": np.zeros((4 + (i == 5), 4, 1), np.uint8), "label": 0}

    b = pipeline.GlobalBatches(Ragged(), global_batch_size=8, seed=0, mesh=make_mesh(1), keys=("image",),
                               num_workers=2)
    with pytest.raises(ValueError, match=r"example 5 has image of shape \(5, 4, 1\).*config.data.image_size"):
        next(b.iterate(0))


def test_which_splits_have_labels():
    with mock(4):
        assert examples("stl10", "train").labelled and examples("cifar10", "train").labelled
        unlabelled = examples("stl10", "unlabelled", image_size=(32, 32))
        assert not unlabelled.labelled
        # A TFDS image set with no label feature at all (LSUN: images only); its label reads -1.
        lsun = examples("lsun/classroom", "train", image_size=(16, 16))
        assert not lsun.labelled and lsun[0]["label"] == -1


def test_a_dataset_that_is_not_prepared_is_refused_with_the_command_that_prepares_it(tmp_path):
    with pytest.raises(datasets.DatasetNotPrepared) as e:
        pipeline.data_source("cifar10", "train", str(tmp_path))
    message = str(e.value)
    assert "\n" not in message
    assert f"cifar10 is not prepared in {tmp_path}" in message
    assert f"`tfds build cifar10 --data_dir {tmp_path} --file_format=array_record`" in message
    assert "TensorFlow" in message and "manual" not in message
    hint = datasets.preparation_hint("imagenet2012", str(tmp_path))
    assert "--manual_dir" in hint and "ILSVRC2012_img_train.tar" in hint and "\n" not in hint
    assert datasets.preparation_hint("no_such_dataset", str(tmp_path)) is None
