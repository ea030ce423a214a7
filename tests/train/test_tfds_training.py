"""TFDS image datasets by name through the runner (data from `tfds.testing.mock_data`): cifar10, stl10's
unlabelled split with probes on its labelled train split, imagenette's images of varying size resized on
the host; and the refusals (unlabelled data for probes or SupCon, a varying size without
data.image_size, a dataset not prepared) in one line with exit status 2 before the workdir."""

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from contrastive.main import EXIT_BAD_INPUT, run
from contrastive.train.metrics_writer import read_metrics
from contrastive.train.runner import train_and_evaluate


def mock(n=64):
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def tfds_config(tiny_config, name, **overrides):
    # One image shape (16 x 16 x 3) for all three, so that they share their compiled programs.
    return tiny_config(**{"data.name": name, "num_steps": 3, "batch_size": 32, "data.num_workers": 4,
                          "data.image_size": (16, 16), "eval.at_end": True, "evals.view_geometry.at_end": False,
                          "evals.probes.representations": ("learned",), "eval.batch_size": 64, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize(("name", "overrides"), [
    ("cifar10", {}),  # 32 x 32 stored, resized on the host; in memory
    ("stl10", {"data.train_split": "unlabelled", "data.probe_train_split": "train"}),  # 96 x 96 stored
    ("imagenette", {"data.in_memory": False, "data.prefetch": 3}),  # varying sizes, read by the workers
], ids=["cifar10", "stl10_unlabelled", "imagenette_resized"])
def test_a_tfds_dataset_trains_and_is_probed_through_the_runner(tiny_config, tmp_path, name, overrides):
    config = tfds_config(tiny_config, name, **overrides)
    with mock():
        result = train_and_evaluate(config, tmp_path)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert result["step"] == 3 and result["num_train"] == result["num_test"] == 64
    assert 0.0 <= result["learned"]["linear_probe"] <= 1.0 and 0.0 <= result["learned"]["knn"] <= 1.0


REFUSALS = [
    ("stl10", ["data.train_split='unlabelled'", "data.image_size=(16, 16)", "eval.at_end=True"],
     r"config.evals.probes needs labels, but the split it is fitted on, 'unlabelled' of data.name='stl10', has "
     r"none \(config.data.probe_train_split=''; '' uses data.train_split\)"),
    ("stl10", ["data.train_split='unlabelled'", "data.probe_train_split='unlabelled'", "data.image_size=(16, 16)",
               "evals.probes.every_steps=1"], r"set config.data.probe_train_split to a labelled split"),
    ("stl10", ["data.train_split='unlabelled'", "data.image_size=(16, 16)", "loss.name='supcon'"],
     r"loss.name='supcon' needs labels, but config.data.train_split='unlabelled' of data.name='stl10' has none"),
    ("lsun/classroom", ["data.train_split='train'", "data.test_split='train'", "data.image_size=(16, 16)",
                        "eval.at_end=True"], r"config.evals.probes needs labels"),
    ("imagenette", [], r"config.data.image_size=\(\) keeps the stored size, but the images of "
                       r"data.name='imagenette' vary in size"),
]


@pytest.mark.parametrize(("name", "overrides", "message"), REFUSALS,
                         ids=["stl10_probe_default", "stl10_probe_unlabelled", "stl10_supcon", "lsun_no_label",
                              "imagenette_no_size"])
def test_refused_in_one_line_before_the_workdir(tmp_path, capsys, compilation_cache, name, overrides, message):
    workdir = tmp_path / "new_run"
    args = ["--config", "configs/simclr_digits.py", "--workdir", str(workdir), f"--config.data.name={name!r}",
            "--config.progress=False", "--config.eval.at_end=False",
            f"--config.compilation_cache_dir={compilation_cache!r}", *[f"--config.{o}" for o in overrides]]
    with mock(8):
        code = run(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not workdir.exists()


def test_a_dataset_that_is_not_prepared_is_refused_with_how_to_prepare_it(tmp_path, capsys):
    workdir, data_dir = tmp_path / "new_run", tmp_path / "tfds"
    code = run(["--config", "configs/simclr_digits.py", "--workdir", str(workdir), "--config.data.name='cifar10'",
                f"--config.data.data_dir={str(data_dir)!r}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "config.data.name='cifar10', config.data.train_split='train' cannot be read" in lines[0]
    assert f"`tfds build cifar10 --data_dir {data_dir} --file_format=array_record`" in lines[0]
    assert not workdir.exists()
