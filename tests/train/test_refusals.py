"""Every config field with bad values: one line, exit status 2, and a new workdir left absent.

`BAD` lists, for each field of the default config (and the `method` fields on the configs that have them),
values that must be refused: a value of the wrong type and out-of-range or unknown values. A field that
every value of its type suits is listed with only a wrong-type value. The test fails when a field of the
default config has no entry, so a new field needs one.
"""

import pytest

from contrastive.main import EXIT_BAD_INPUT, run
from contrastive.train.config import flatten, load_config

DEFAULT = "configs/simclr_digits.py"

# field -> (config file, bad values as command-line text)
BAD = {
    "seed": (DEFAULT, ["'a'", "-1", "1.5"]),
    "num_steps": (DEFAULT, ["0", "-3", "'x'"]),
    "batch_size": (DEFAULT, ["0", "-8", "3000", "60", "'x'"]),
    "num_devices": (DEFAULT, ["-1", "1000", "'x'"]),
    "grad_cache_chunks": (DEFAULT, ["-1", "3", "'x'"]),
    "sharding": (DEFAULT, ["zero3", "3"]),
    "data.name": (DEFAULT, ["no_such_dataset", "digits_captions", "3"]),
    "data.data_dir": (DEFAULT, ["/dev/null/tfds"]),  # any other text is a folder name
    "data.train_split": (DEFAULT, ["no_such_split", "3"]),
    "data.test_split": (DEFAULT, ["no_such_split", "3"]),
    "data.in_memory": (DEFAULT, ["'yes'", "1"]),
    "data.probe_train_split": (DEFAULT, ["no_such_split", "3"]),
    "data.image_size": (DEFAULT, ["(0, 8)", "(8,)", "(8.0, 8.0)", "'x'"]),
    "data.num_workers": (DEFAULT, ["-1", "'x'"]),
    "data.prefetch": (DEFAULT, ["0", "'x'"]),
    "augment.num_views": (DEFAULT, ["0", "1", "3", "'x'"]),
    "augment.recipe": (DEFAULT, ["simclr_typo", "3"]),
    "augment.max_zoom": (DEFAULT, ["-0.1", "1.0", "'x'"]),
    "augment.max_rotation_deg": (DEFAULT, ["-1.0", "'x'"]),
    "augment.max_shear": (DEFAULT, ["-0.1", "'x'"]),
    "augment.max_shift": (DEFAULT, ["-1.0", "'x'"]),
    "augment.brightness": (DEFAULT, ["-0.2", "'x'"]),
    "augment.contrast": (DEFAULT, ["-0.3", "1.5", "'x'"]),
    "augment.noise_std": (DEFAULT, ["-0.05", "'x'"]),
    "augment.cutout_size": (DEFAULT, ["-3", "9", "'x'"]),
    "augment.cutout_prob": (DEFAULT, ["-0.5", "1.5", "'x'"]),
    "augment.crop_scale": (DEFAULT, ["(0.5, 0.2)", "(0.0, 1.0)", "0.5", "'x'"]),
    "augment.crop_ratio": (DEFAULT, ["(1.5, 0.5)", "(0.0, 1.0)", "'x'"]),
    "augment.flip_prob": (DEFAULT, ["1.5", "(0.5, -0.1)", "'x'"]),
    "augment.jitter_prob": (DEFAULT, ["-0.1", "'x'"]),
    "augment.jitter_brightness": (DEFAULT, ["-0.4", "'x'"]),
    "augment.jitter_contrast": (DEFAULT, ["-0.4", "'x'"]),
    "augment.jitter_saturation": (DEFAULT, ["(0.2, -0.2)", "'x'"]),
    "augment.jitter_hue": (DEFAULT, ["0.6", "-0.1", "'x'"]),
    "augment.grayscale_prob": (DEFAULT, ["1.2", "'x'"]),
    "augment.blur_prob": (DEFAULT, ["(1.0, 1.1)", "'x'"]),
    "augment.blur_sigma": (DEFAULT, ["(0.0, 2.0)", "(2.0, 0.1)", "'x'"]),
    "augment.blur_kernel_frac": (DEFAULT, ["-0.1", "1.5", "'x'"]),
    "augment.solarize_prob": (DEFAULT, ["(0.0, 2.0)", "'x'"]),
    "augment.solarize_threshold": (DEFAULT, ["-0.5", "1.5", "'x'"]),
    "model.encoder": (DEFAULT, ["resnet", "3"]),
    "model.resnet.stem": (DEFAULT, ["vgg", "3"]),
    "model.resnet.norm": (DEFAULT, ["layer", "3"]),
    "model.resnet.width": (DEFAULT, ["0.0", "-0.5", "'x'"]),
    "model.resnet.zero_init_residual": (DEFAULT, ["'yes'", "1"]),
    "model.dtype": (DEFAULT, ["float16", "bfloat16", "3"]),
    "model.remat": (DEFAULT, ["True", "'x'"]),
    "model.vit.patch_size": (DEFAULT, ["0", "-4", "'x'"]),
    "model.vit.pool": (DEFAULT, ["max", "3"]),
    "model.widths": (DEFAULT, ["()", "(0, 16)", "(-8,)", "'x'"]),
    "model.dense": (DEFAULT, ["(0,)", "(-4,)", "'x'"]),
    "model.head_hidden": (DEFAULT, ["(0,)", "(-4,)", "'x'"]),
    "model.projection_dim": (DEFAULT, ["0", "-4", "'x'"]),
    "model.head_norm": (DEFAULT, ["group", "3"]),
    "model.predictor_hidden": (DEFAULT, ["(16,)", "'x'"]),
    "model.batch_norm_per_view": (DEFAULT, ["'yes'", "1"]),
    "loss.name": (DEFAULT, ["no_such_loss", "3"]),
    "loss.temperature": (DEFAULT, ["0.0", "-0.1", "'x'"]),
    "method.ema.momentum": ("configs/byol_digits.py", ["1.5", "-0.1", "'x'"]),
    "method.ema.momentum_end": ("configs/byol_digits.py", ["1.5", "0.5", "'x'"]),
    "method.queue_size": ("configs/moco_digits.py", ["-64", "100", "0", "'x'"]),
    "method.directpred.enabled": ("configs/byol_digits.py", ["True", "'x'"]),
    "method.directpred.rho": ("configs/directpred_digits.py", ["1.5", "-0.1", "'x'"]),
    "method.directpred.eps": ("configs/directpred_digits.py", ["-0.1", "'x'"]),
    "optimizer.name": (DEFAULT, ["adam_typo", "3"]),
    "optimizer.lr": (DEFAULT, ["-0.1", "0.0", "'x'"]),
    "optimizer.weight_decay": (DEFAULT, ["-1e-4", "'x'"]),
    "optimizer.b1": (DEFAULT, ["1.0", "-0.1", "'x'"]),
    "optimizer.b2": (DEFAULT, ["1.5", "-0.1", "'x'"]),
    "optimizer.momentum": (DEFAULT, ["-0.1", "1.0", "'x'"]),
    "optimizer.trust_coefficient": (DEFAULT, ["-1e-3", "0.0", "'x'"]),
    "optimizer.warmup_steps": (DEFAULT, ["-1", "600", "'x'"]),
    "optimizer.schedule": (DEFAULT, ["linear", "3"]),
    "optimizer.grad_clip_norm": (DEFAULT, ["-1.0", "'x'"]),
    "checkpoint.every_steps": (DEFAULT, ["0", "'x'"]),
    "checkpoint.keep": (DEFAULT, ["0", "'x'"]),
    "log_every": (DEFAULT, ["0", "'x'"]),
    "progress": (DEFAULT, ["'yes'", "1"]),
    "logging.tensorboard": (DEFAULT, ["'yes'", "1"]),
    "compilation_cache_dir": (DEFAULT, ["/dev/null/cache"]),
    "stop_grace_s": (DEFAULT, ["0.0", "-1.0", "'x'"]),
    "eval.at_end": (DEFAULT, ["'yes'", "1"]),
    "eval.batch_size": (DEFAULT, ["0", "'x'"]),
    "evals.probes.every_steps": (DEFAULT, ["-1", "'x'"]),
    "evals.probes.at_end": (DEFAULT, ["'yes'", "1"]),
    "evals.probes.representations": (DEFAULT, ["()", "('learned', 'pixels')", "3"]),
    "evals.probes.knn_k": (DEFAULT, ["0", "'x'"]),
    "evals.probes.knn_temperature": (DEFAULT, ["0.0", "-0.07", "'x'"]),
    "evals.probes.knn_bank_block": (DEFAULT, ["-1", "'x'"]),
    "evals.probes.knn_query_block": (DEFAULT, ["0", "'x'"]),
    "evals.probes.linear_solver": (DEFAULT, ["newton", "3"]),
    "evals.probes.full_batch_max_elements": (DEFAULT, ["0", "'x'"]),
    "evals.probes.minibatch_size": (DEFAULT, ["0", "'x'"]),
    "evals.probes.minibatch_epochs": (DEFAULT, ["0", "'x'"]),
    "evals.probes.minibatch_learning_rate": (DEFAULT, ["0.0", "'x'"]),
    "evals.probes.raw_pixels_max_elements": (DEFAULT, ["0", "'x'"]),
    "evals.probes.block_rows": (DEFAULT, ["0", "'x'"]),
    "evals.probes.linear_probe_l2_grid": (DEFAULT, ["()", "(0.1, 0.0)", "(0.1, 'x')"]),
    "evals.view_geometry.every_steps": (DEFAULT, ["-2", "'x'"]),
    "evals.view_geometry.at_end": (DEFAULT, ["'yes'", "1"]),
    "evals.view_geometry.plot": (DEFAULT, ["'yes'", "1"]),
}

# Small and short, so that a value that slipped through would train in seconds (and fail the test).
TINY = {"num_steps": "2", "batch_size": "64", "model.widths": "(8, 16)", "model.head_hidden": "(16,)",
        "model.projection_dim": "8", "optimizer.warmup_steps": "1", "eval.at_end": "False", "progress": "False"}


def test_every_field_of_the_default_config_has_bad_values():
    fields = set(flatten(load_config(DEFAULT)))
    assert fields - set(BAD) == set(), "give the new fields bad values in BAD"
    missing = {f for f, (file, _) in BAD.items() if f not in flatten(load_config(file))}
    assert missing == set(), "BAD names fields its config file does not have"


CASES = [(field, file, text) for field, (file, values) in BAD.items() for text in values]


@pytest.mark.parametrize(("field", "config_file", "text"), CASES, ids=[f"{f}={t}" for f, _, t in CASES])
def test_bad_value_is_refused_in_one_line_before_the_workdir(field, config_file, text, data_dir, compilation_cache,
                                                            tmp_path, capsys):
    workdir = tmp_path / "new_run"
    base = {**TINY, "data.data_dir": repr(data_dir), "compilation_cache_dir": repr(compilation_cache)}
    overrides = [f"--config.{k}={v}" for k, v in base.items() if k != field] + [f"--config.{field}={text}"]
    code = run(["--config", config_file, "--workdir", str(workdir), *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and field.split(".")[-1] in lines[0], err
    assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), [
    ("--config.batch_size=3000", "batch_size"),
    ("--config.model.encoder=resnet", "model.encoder='resnet'"),
])
def test_the_command_line_refuses_in_one_line_on_one_device(tmp_path, data_dir, override, message):
    """As a user runs it: a fresh process with one CPU device (no virtual devices), the default config."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workdir = tmp_path / "new_run"
    proc = subprocess.run([sys.executable, "-m", "contrastive.main", "--config", DEFAULT, "--workdir", str(workdir),
                           f"--config.data.data_dir={data_dir}", override], capture_output=True, text=True,
                          env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not workdir.exists()
