"""The file locks of `contrastive.locks`: a held lock names its holder, a dead holder's lock is taken over,
and two processes preparing one dataset at once both succeed (one prepares, the other waits)."""

import json
import os
import re
import subprocess
import sys

import pytest

from contrastive import locks


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    path = tmp_path / "workdir" / "job.lock"
    with locks.HeldLock(path):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["since"]
        with pytest.raises(locks.LockHeld, match=re.escape(f"pid {os.getpid()}, since {holder['since']}")):
            locks.HeldLock(path).acquire()
        assert json.loads(path.read_text()) == holder  # the refused one wrote nothing
    with locks.HeldLock(path):  # released at the end of the block
        pass


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "job.lock"
    code = ("import sys, os, signal; from contrastive import locks; locks.HeldLock(sys.argv[1]).acquire(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
    assert result.returncode == -9
    dead = json.loads(path.read_text())["pid"]
    assert dead != os.getpid()
    with locks.HeldLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_an_unreadable_lock_file_does_not_stop_a_new_holder(tmp_path):
    path = tmp_path / "job.lock"
    path.write_text("not json")
    assert locks.describe_holder(path) == "a process that did not say who it is"
    with locks.HeldLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_two_processes_preparing_the_digits_at_once_both_succeed(tmp_path):
    """Without the lock, one of them fails on TFDS's rename of the prepared folder (the processes of a
    multi-host job that share a data_dir do exactly this)."""
    code = ("import sys; from contrastive.data import digits; b = digits.digits_builder(sys.argv[1]); "
            "print(len(b.as_data_source(split='train')))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert [out.split()[-1] for out, _ in results] == ["1352", "1352"]
