"""The `attributes` evaluator: probes of a dataset's nuisance classes, learned vs random init."""

import json

import numpy as np
import pytest

from contrastive.data import datasets
from contrastive.data import photo_digits as pd
from contrastive.train import evaluators
from contrastive.train.config import ConfigError, load_config
from contrastive.train.runner import train_and_evaluate

N_TRAIN, N_TEST, SHADES = 400, 200, 4


def _toy_split(split: str) -> list[dict]:
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = N_TRAIN if split == "train" else N_TEST
    shade = np.arange(n) % SHADES
    shade[: n // 4] = 0  # shade 0 is the majority class
    return [{"label": np.int64(i % 2), "shade": np.int64(s), "coin": np.int64(c)}
            for i, (s, c) in enumerate(zip(shade, rng.integers(0, 2, n)))]


@pytest.fixture
def toy():
    spec = datasets.register_dataset(datasets.DatasetSpec(
        "attr_toy", lambda split, data_dir: _toy_split(split), attributes={
            "shade": datasets.Attribute(("shade",), lambda a: a["shade"], tuple(f"s{i}" for i in range(SHADES))),
            "coin": datasets.Attribute(("coin",), lambda a: a["coin"], ("heads", "tails"))}))
    yield spec
    del datasets.DATASETS["attr_toy"]


def _context(config, features):
    splits = {s: _toy_split(s) for s in ("train", "test")}
    arrays = {s: {"label": np.array([e["label"] for e in splits[s]])} for s in splits}
    ctx = evaluators.EvalContext(config=config, graphdef=None, state=None, family="views", pixel_max=1.0,
                                 train=arrays["train"], load_test=lambda: arrays["test"], build_model=None,
                                 encode=None)
    for key, value in features.items():
        ctx._features[key] = value
    return ctx


def test_the_features_that_encode_an_attribute_are_probed_to_it_and_the_others_to_chance(toy):
    config = load_config("configs/simclr_digits.py")
    config.data.name = "attr_toy"
    rng = np.random.default_rng(2)
    shade = {s: np.array([e["shade"] for e in _toy_split(s)]) for s in ("train", "test")}
    features = {}
    for split in ("train", "test"):
        n = len(shade[split])
        features["learned", split] = (np.eye(SHADES)[shade[split]] + 0.1 * rng.normal(size=(n, SHADES))).astype(
            np.float32)
        features["random_init", split] = rng.normal(size=(n, SHADES)).astype(np.float32)
    (_, options), = evaluators.entries(_with_attributes(config), "views")
    out = evaluators.EVALUATORS["attributes"].run(_context(config, features), options)["attributes"]
    assert set(out) == {"shade", "coin"}
    # test shades: rows 0..49 are 0, then i % 4 for i = 50..199 (0 at 52, 56, .., 196): 50 + 37 of 200
    assert out["shade"]["classes"] == SHADES and out["shade"]["majority"] == pytest.approx(87 / 200)
    assert out["shade"]["learned"]["linear_probe"] > 0.97 and out["shade"]["learned"]["knn"] > 0.97
    assert out["shade"]["random_init"]["linear_probe"] < 0.6
    assert out["coin"]["learned"]["linear_probe"] < 0.65  # a fair coin the features do not hold
    lines = evaluators.format_results([(evaluators.EVALUATORS["attributes"], options)], {"attributes": out})
    assert "shade" in lines and "learned LP / kNN" in lines


def _with_attributes(config, **options):
    config.evals = {"attributes": dict(options)}
    return config


@pytest.mark.parametrize("data, names, match", [
    ("digits", (), "data.name='digits' has no attributes to probe"),
    ("attr_toy", ("hue",), "'hue' is not an attribute of data.name='attr_toy'; its attributes: shade, coin")])
def test_a_dataset_without_the_attribute_is_refused(toy, data, names, match):
    config = load_config("configs/simclr_digits.py")
    config.data.name = data
    with pytest.raises(ConfigError, match=match):
        evaluators.entries(_with_attributes(config, names=names), "views")


def test_photo_digits_attributes_are_the_captions_words():
    data = pd.generate("test", seed=0, recipe=pd.Recipe(num_train=10, num_test=50))
    attrs = pd.ATTRIBUTES
    colour = attrs["colour"][1](data)
    place = attrs["place"][1](data)
    for i in range(50):
        caption = pd.captions_for(int(data["label"][i]), data["colour"][i], data["position"][i], int(data["scale"][i]))
        assert caption[0] == f"a {attrs['colour'][2][colour[i]]} {pd.digits_words()[data['label'][i]]} " \
                             f"{attrs['place'][2][place[i]]}"
    np.testing.assert_array_equal(attrs["photo"][1](data), data["photo"])


def test_a_finished_run_is_evaluated_again_with_the_attributes(tiny_config, tmp_path):
    """The runner on registered photo digits (a small recipe); the same workdir then evaluated with the
    attributes evaluator added (evals may change on resume), reading the raw data source."""
    small = pd.PhotoDigitsConfig(name="attr_small", recipe=pd.Recipe(num_train=256, num_test=128))
    spec = datasets.get_dataset("photo_digits")
    datasets.register_dataset(datasets.DatasetSpec(
        "photo_digits_attr_small", lambda split, data_dir: pd.photo_digits_builder(data_dir, small).as_data_source(
            split=split), classnames=spec.classnames, attributes=spec.attributes))
    try:
        config = tiny_config(num_steps=3, batch_size=64, **{"optimizer.warmup_steps": 1,
                                                            "data.name": "photo_digits_attr_small",
                                                            "data.data_dir": str(tmp_path / "data")})
        config.eval.at_end = True
        config.evals = {"probes": {"representations": ("learned",)}}
        train_and_evaluate(config, tmp_path / "w")
        config.evals = {"probes": {"representations": ("learned",)}, "attributes": {"names": ("photo", "place")}}
        results = train_and_evaluate(config, tmp_path / "w")
    finally:
        del datasets.DATASETS["photo_digits_attr_small"]
    saved = json.loads((tmp_path / "w" / "eval.json").read_text())
    for out in (results, saved):
        assert set(out["attributes"]) == {"photo", "place"}
        assert out["attributes"]["photo"]["classes"] == 2 and out["attributes"]["place"]["classes"] == 9
        for name in ("photo", "place"):
            assert set(out["attributes"][name]) == {"classes", "majority", "learned", "random_init"}
            assert 0.0 <= out["attributes"][name]["learned"]["linear_probe"] <= 1.0
    assert saved["step"] == 3 and "linear_probe" in saved["learned"]


def test_raw_pixels_above_the_limit_are_refused_naming_the_entry(toy):
    config = load_config("configs/simclr_digits.py")
    config.data.name = "attr_toy"
    chosen = evaluators.entries(_with_attributes(config, representations=("raw_pixels",),
                                                 raw_pixels_max_elements=1000), "views")
    with pytest.raises(ConfigError, match=r"evals.attributes.representations includes 'raw_pixels'.*"
                                          r"more than evals.attributes.raw_pixels_max_elements=1,000"):
        evaluators.check_sizes(chosen, config, evaluators.SplitSizes(N_TRAIN, N_TEST, (8, 8, 1)))
