"""`contrastive.parallel.coordination.broadcast_text` in two real local processes (jax.distributed, gloo).

Process 0 arrives 40 s after process 1 (still building, on a loaded host): process 1 waits for process
0's text, twice under the same name, and the first collective after it runs.
"""

import subprocess
import sys
import textwrap

import pytest

from contrastive.launch import child_env, free_port

SCRIPT = textwrap.dedent("""
    import sys, time
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, lag = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                               heartbeat_timeout_seconds=300)
    import numpy as np
    from jax.experimental import multihost_utils
    from contrastive.parallel import coordination
    if pid == 0:
        time.sleep(lag)  # still building, on a loaded host
    texts = [coordination.broadcast_text("verdict", f"from 0, call {i}" if pid == 0 else "ignored") for i in (1, 2)]
    total = multihost_utils.process_allgather(np.float32(pid + 1)).sum()
    print(f"process {pid}: sum {total:g}; {texts}", flush=True)
""")


def run_pair(lag_s: float, timeout: float = 240):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(port), str(i), str(lag_s)],
                              env=child_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_process_0_40_s_late_sends_its_text_and_the_collective_after_it_runs():
    codes, outs = run_pair(40)
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outs)
    for i, out in enumerate(outs):
        assert f"process {i}: sum 3; ['from 0, call 1', 'from 0, call 2']" in out, out[-2000:]
