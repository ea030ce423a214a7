"""Shared data for the evaluation tests: the real 8x8 digits set split in halves."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits_halves():
    """(train_x, train_y, test_x, test_y): sklearn's digits, shuffled with a fixed seed, split in halves."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    half = len(y) // 2
    return x[:half], y[:half], x[half:], y[half:]
