import pathlib

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from contrastive.data import datasets, digits, pipeline
from contrastive.data import photo_digits as pd

SMALL = pd.Recipe(num_train=300, num_test=100)
FIELDS = {"image": ((32, 32, 3), np.uint8), "label": ((), np.int64), "index": ((), np.int64),
          "colour": ((3,), np.uint8), "position": ((2,), np.int32), "scale": ((), np.int64),
          "photo": ((), np.int64), "crop": ((4,), np.int32), "digit_index": ((), np.int64)}


@pytest.fixture(scope="module")
def small():
    return {split: pd.generate(split, seed=0, recipe=SMALL) for split in ("train", "test")}


def test_same_seed_same_bytes_other_seed_other_images(small):
    again = pd.generate("train", seed=0, recipe=SMALL)
    for key, value in small["train"].items():
        assert value.tobytes() == again[key].tobytes(), key
    other = pd.generate("train", seed=1, recipe=SMALL)
    assert np.mean(other["image"] != small["train"]["image"]) > 0.5


def test_train_and_test_share_no_digit_and_no_photo_pixel(small):
    split = digits.split_indices()
    assert set(small["train"]["digit_index"]) <= set(split["train"])
    assert set(small["test"]["digit_index"]) <= set(split["test"])
    for name, (start, end) in pd.PHOTO_BANDS.items():
        crop = small[name]["crop"]
        assert (crop[:, 1] >= start).all() and (crop[:, 3] <= end).all(), name
        assert (crop[:, 0] >= 0).all() and (crop[:, 2] <= 427).all()
    assert pd.PHOTO_BANDS["train"][1] <= pd.PHOTO_BANDS["test"][0]


def test_labels_are_the_source_digits_and_balanced(small):
    target = load_digits().target
    for split, n in (("train", SMALL.num_train), ("test", SMALL.num_test)):
        data = small[split]
        np.testing.assert_array_equal(target[data["digit_index"]], data["label"])
        assert np.bincount(data["label"], minlength=10).tolist() == [n // 10] * 10
        np.testing.assert_array_equal(data["index"], np.arange(n))


def test_image_is_the_crop_outside_the_digit_and_the_colour_inside(small):
    """Outside the digit's box each pixel is the resized photo crop; the box's brightest mask pixels are
    (almost) the digit's colour."""
    data = small["train"]
    photos = pd._photos()
    for i in range(20):
        r0, c0, r1, c1 = data["crop"][i]
        crop = Image.fromarray(photos[data["photo"][i]][r0:r1, c0:c1])
        background = np.asarray(crop.resize((32, 32), Image.BILINEAR))
        row, col = data["position"][i]
        s = data["scale"][i]
        outside = np.ones((32, 32), bool)
        outside[row:row + s, col:col + s] = False
        np.testing.assert_array_equal(data["image"][i][outside], background[outside])
        box = data["image"][i][row:row + s, col:col + s].astype(float)
        distance_to_colour = np.linalg.norm(box - data["colour"][i], axis=-1)
        assert distance_to_colour.min() <= 2.0
    assert data["scale"].min() >= SMALL.min_scale and data["scale"].max() <= SMALL.max_scale
    assert (data["position"] + data["scale"][:, None] <= 32).all()


def test_most_colours_reach_the_minimum_contrast(small):
    data = small["train"]
    photos = pd._photos()
    far = []
    for i in range(50):
        r0, c0, r1, c1 = data["crop"][i]
        bg = np.asarray(Image.fromarray(photos[data["photo"][i]][r0:r1, c0:c1]).resize((32, 32), Image.BILINEAR), float)
        (row, col), s = data["position"][i], data["scale"][i]
        far.append(np.linalg.norm(data["colour"][i] - bg[row:row + s, col:col + s].reshape(-1, 3).mean(0)))
    assert np.mean(np.array(far) >= pd.MIN_CONTRAST) >= 0.95


def test_captions_name_digit_colour_and_place():
    caps = pd.captions_for(7, (250, 10, 10), (0, 0), 10)
    assert caps[0] == "a red seven at the top left"
    assert "the number seven" in caps and "a 7 at the top left" in caps
    assert pd.place_name((11, 11), 10) == "in the centre"
    assert pd.place_name((22, 11), 10) == "at the bottom"
    assert pd.colour_name((5, 5, 250)) == "blue"


@pytest.mark.parametrize("recipe", ["", "_large"])
def test_digit_captions_are_the_captions_that_do_not_name_the_colour(recipe):
    example = {"captions": pd.captions_for(7, (250, 10, 10), (0, 0), 10)}
    every = datasets.get_dataset(f"photo_digits{recipe}_captions").captions(example)
    digit = datasets.get_dataset(f"photo_digits{recipe}_digit_captions").captions(example)
    assert every == example["captions"] and digit == ["the number seven", "a 7 at the top left"]
    assert datasets.get_dataset(f"photo_digits{recipe}_digit_captions").family == "image_text"


def test_the_large_recipe_has_larger_digits_over_fewer_positions():
    import dataclasses

    data = pd.generate("train", seed=0, recipe=dataclasses.replace(pd.LARGE, num_train=300))
    assert data["scale"].min() >= 22 and data["scale"].max() == 28
    assert data["position"].max() <= 32 - 22 and (data["position"] + data["scale"][:, None] <= 32).all()
    assert data["image"].shape == (300, 32, 32, 3) and np.bincount(data["label"]).tolist() == [30] * 10


@pytest.mark.parametrize("bad", [dict(min_scale=20, max_scale=10), dict(max_scale=33), dict(min_crop=16),
                                 dict(max_crop=500)])
def test_bad_recipe_is_refused(bad):
    with pytest.raises(ValueError, match="scale|crop"):
        pd.Recipe(**bad)


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.array_record*"))}


def test_builder_is_deterministic_across_data_dirs(tmp_path):
    config = pd.PhotoDigitsConfig(name="small", recipe=SMALL)
    a = pd.photo_digits_builder(str(tmp_path / "a"), config)
    b = pd.photo_digits_builder(str(tmp_path / "b"), pd.PhotoDigitsConfig(name="small", recipe=SMALL))
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(files_a) >= 2 and files_a == files_b
    example = a.as_data_source(split="test")[0]
    assert example["captions"][0].decode().startswith("a ")
    assert len(b.as_data_source(split="train")) == SMALL.num_train


@pytest.mark.slow
def test_registered_dataset_has_the_full_splits_fields_and_balance(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("photo_digits"))
    for split, n in (("train", 10_000), ("test", 2_000)):
        source = pipeline.data_source("photo_digits", split, data_dir)
        assert len(source) == n
        data = pipeline.read_all(source, tuple(FIELDS))
        for key, (shape, dtype) in FIELDS.items():
            assert data[key].shape == (n, *shape) and data[key].dtype == dtype, key
        assert np.bincount(data["label"]).tolist() == [n // 10] * 10
        assert sorted(data["index"]) == list(range(n))
        # The stored images are exactly `generate`'s.
        ref = pd.generate(split)
        order = np.argsort(data["index"])
        np.testing.assert_array_equal(data["image"][order], ref["image"])
        np.testing.assert_array_equal(data["crop"][order], ref["crop"])
    assert pipeline.max_pixel_value("photo_digits") == 255.0
    captioned = pipeline.data_source("photo_digits_captions", "test", data_dir)
    assert len(captioned[0]["captions"]) == len(pd.CAPTION_TEMPLATES)
    large = pipeline.read_all(pipeline.data_source("photo_digits_large", "test", data_dir), ("image", "index"))
    large_captioned = pipeline.data_source("photo_digits_large_captions", "test", data_dir)
    assert len(large_captioned[0]["captions"]) == len(pd.CAPTION_TEMPLATES)
    want = pd.generate("test", recipe=pd.LARGE)["image"]
    np.testing.assert_array_equal(large["image"][np.argsort(large["index"])], want)


@pytest.mark.parametrize("recipe, dataset, steps", [("", "photo_digits", 400),
                                                    (":large", "photo_digits_large", 1000)])
@pytest.mark.parametrize("name", ["simclr", "byol", "moco", "clip"])
def test_photo_digits_configs_pass_the_runner_checks(name, recipe, dataset, steps):
    """The config argument picks the data recipe; the captioned variant for CLIP."""
    from contrastive.train import config as config_lib
    from contrastive.train.runner import check_config

    config = config_lib.load_config(f"configs/{name}_photo_digits.py{recipe}", {})
    setup = check_config(config)
    assert config.model.encoder == "resnet18" and config.model.resnet.width == 0.25
    assert setup.augment.flip_prob == (0.0,) and setup.augment.crop_scale == (0.3, 1.0)
    assert config.data.name == (f"{dataset}_captions" if name == "clip" else dataset)
    budget = {"moco": 2000, "clip": 2000, "byol": 800}  # 15 minutes at their step rates on `large`
    assert config.num_steps == (budget.get(name, steps) if recipe else steps)
    assert datasets.get_dataset(config.data.name).family == ("image_text" if name == "clip" else "views")
    with pytest.raises(config_lib.ConfigError, match=r"unknown recipe 'huge'; known: none or large"):
        config_lib.load_config(f"configs/{name}_photo_digits.py:huge", {})
