"""A tiny config that trains in seconds (on the session's prepared digits, tests/conftest.py)."""

import pytest

from contrastive.train.config import load_config, set_values


@pytest.fixture
def tiny_config(data_dir, compilation_cache):
    def make(config_file="configs/simclr_digits.py", **overrides):
        c = load_config(config_file)
        c.data.data_dir = data_dir
        c.compilation_cache_dir = compilation_cache
        c.num_steps = 20
        c.batch_size = 64
        c.log_every = 1
        c.progress = False
        c.model.widths = (8, 16)
        c.model.head_hidden = (16,)
        c.model.projection_dim = 8
        c.optimizer.warmup_steps = 2
        c.checkpoint.every_steps = 5
        c.eval.at_end = False
        set_values(c, overrides)
        return c

    return make
