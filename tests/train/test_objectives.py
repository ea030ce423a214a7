import pathlib

import numpy as np
import pytest

from contrastive.train.config import ConfigError, load_config
from contrastive.train.metrics_writer import read_metrics
from contrastive.train.objectives import view_method
from contrastive.train.runner import train_and_evaluate


@pytest.mark.parametrize("config_file", ["configs/simclr_digits.py", "configs/dcl_digits.py",
                                         "configs/supcon_digits.py"])
def test_each_config_trains_end_to_end(tiny_config, tmp_path, config_file):
    train_and_evaluate(tiny_config(config_file, num_steps=8), tmp_path)
    losses = [r["loss"] for r in read_metrics(pathlib.Path(tmp_path) / "metrics.jsonl")]
    assert len(losses) == 8 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_objective_checks_names_views_and_keys():
    config = load_config("configs/simclr_digits.py")
    with pytest.raises(ConfigError, match="loss.name='nt_xentt' is not one of nt_xent, dcl, supcon"):
        view_method("nt_xentt")
    config.augment.num_views = 3
    with pytest.raises(ConfigError, match="needs augment.num_views=2, got 3"):
        view_method("nt_xent").check(config, 1)
    config.loss.name = "supcon"
    view_method("supcon").check(config, 1)  # any number of views
