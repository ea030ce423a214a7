"""Each real-scale encoder resumes exactly after SIGKILL on mock TFDS image data: a ResNet-18 (CIFAR stem,
width 0.125) on `tfds.testing.mock_data` CIFAR-10 (32 x 32, stored size, in memory) and a ViT-Ti (patch 16)
on mock ImageNet (images of varying size streamed and fitted to 64 x 64 on the host) train through the
command line, are killed with SIGKILL after a checkpoint, relaunched with the same command, and end with
the per-step losses of an uninterrupted run."""

import signal
import subprocess
import sys

import pytest

from contrastive.train.metrics_writer import read_metrics
from tests.train.test_runner import wait_for_step, write_config

NUM_EXAMPLES = 64
# The command line inside `tfds.testing.mock_data` (it patches TFDS in this process only).
LAUNCH = ("import sys\nimport tensorflow_datasets as tfds\nfrom contrastive.main import run\n"
          f"with tfds.testing.mock_data(num_examples={NUM_EXAMPLES}, policy=tfds.testing.MockPolicy.USE_CODE):\n"
          "    code = run(sys.argv[1:])\nsys.exit(code)\n")

DATA = {"cifar10": {"data.name": "cifar10"},
        "imagenet64": {"data.name": "imagenet2012", "data.image_size": (64, 64), "data.test_split": "validation",
                       "data.in_memory": False, "data.num_workers": 2}}
ENCODERS = {"resnet18": {"model.encoder": "resnet18", "model.resnet.stem": "cifar", "model.resnet.width": 0.125,
                         "model.dense": ()},
            "vit_ti": {"model.encoder": "vit_ti"}}
NUM_STEPS, EVERY, KILL_AFTER = 40, 5, 12  # 28 steps left to kill in (0.25-2 s each at load ~12 on 2 cores)


def start(config, workdir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCH, "--config", str(write_config(config, workdir)),
                             "--workdir", str(workdir)], stderr=subprocess.PIPE, text=True)


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir / "metrics.jsonl")]


# Each encoder on one of the two datasets: both encoders and both input paths (in-memory 32 x 32, streamed
# and resized 64 x 64) are covered in two cases of ~3 processes each, not four (the suite's slowest tests).
CASES = [("resnet18", "cifar10"), ("vit_ti", "imagenet64")]


@pytest.mark.slow
@pytest.mark.parametrize(("encoder", "data"), CASES)
def test_an_encoder_killed_on_mock_tfds_data_resumes_to_the_uninterrupted_losses(tiny_config, tmp_path, encoder,
                                                                                 data):
    overrides = {**DATA[data], **ENCODERS[encoder], "num_steps": NUM_STEPS, "batch_size": 32,
                 "checkpoint.every_steps": EVERY, "optimizer.name": "sgd", "optimizer.lr": 0.05,
                 "augment.recipe": "simclr_cifar"}
    if encoder == "vit_ti":
        overrides["model.vit.patch_size"] = 16  # 4 x 4 patches of the 64 x 64 images
    config = tiny_config(**overrides)
    killed = tmp_path / "killed"
    proc = start(config, killed)
    wait_for_step(proc, killed, KILL_AFTER)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = len(losses(killed))
    assert KILL_AFTER <= killed_at < NUM_STEPS, "the run ended before it was killed: give it more steps"
    assert proc.returncode == -signal.SIGKILL

    resumed = start(config, killed)
    err = resumed.communicate()[1]
    assert resumed.returncode == 0, err
    assert "resumed from the checkpoint at step" in err
    full = start(config, tmp_path / "full")
    err = full.communicate()[1]
    assert full.returncode == 0, err
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == list(range(NUM_STEPS))
    assert losses(killed) == losses(tmp_path / "full")  # to the bit
