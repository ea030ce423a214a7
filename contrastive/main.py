"""Command line: `python -m contrastive.main --config configs/x.py[:arg] --workdir DIR [--config.a.b=v ...]`.

Also installed as the console script `contrastive-train`. Bad input ends with one line naming the problem
(exit status 2); a non-finite loss exits with 3; SIGTERM/SIGINT save a checkpoint and exit with 143.

Many processes (one per host, all running this same command): `--coordinator_address HOST:PORT
--num_processes N --process_id I` join a `jax.distributed` job explicitly; with none of them, the job is
joined through jax's own cluster detection when the environment shows a multi-process cluster job (SLURM,
Open MPI, a Cloud TPU pod: `cluster_environment`), or always with `--distributed`. A plain single process
runs exactly as without these flags. `python -m contrastive.launch` starts such a job on one machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERRUPTED = 2, 3, 143


class DistributedError(ValueError):
    """The multi-process flags are inconsistent, or the job could not be joined."""


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        prog="contrastive-train", description=__doc__.splitlines()[0],
        epilog="Override any config field with --config.<key>=<value>, e.g. --config.optimizer.lr=0.3")
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and eval.json go here")
    group = parser.add_argument_group("many processes (jax.distributed)")
    group.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0, the same for all")
    group.add_argument("--num_processes", type=int, default=None, help="processes in the job")
    group.add_argument("--process_id", type=int, default=None, help="this process, 0 .. num_processes - 1")
    group.add_argument("--local_device_ids", default=None, help="comma-separated local devices this process uses")
    group.add_argument("--distributed", action="store_true",
                       help="join a job found by jax's cluster detection even where the environment shows none")
    group.add_argument("--initialization_timeout", type=int, default=300,
                       help="seconds to wait for the coordinator and every process to join (default 300)")
    group.add_argument("--heartbeat_timeout", type=int, default=100,
                       help="seconds without a heartbeat after which a process is taken as dead (default 100)")
    return parser.parse_known_args(argv)


def cluster_environment(environ=os.environ) -> str | None:
    """The multi-process cluster job that `environ` shows, of those jax.distributed.initialize() detects on
    its own, or None. Only jobs of more than one process count: a 1-task SLURM job runs as a plain process.
    (A Cloud TPU VM pod whose workers are found through the metadata server only needs `--distributed`.)"""
    def count(key):
        try:
            return int(environ.get(key, "1"))
        except ValueError:
            return 1

    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in environ for k in slurm) and count("SLURM_NTASKS") > 1:
        return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in environ and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    hosts = environ.get("TPU_WORKER_HOSTNAMES") or environ.get("TPU_PROCESS_ADDRESSES") or ""
    if environ.get("MEGASCALE_COORDINATOR_ADDRESS") or len([h for h in hosts.split(",") if h]) > 1:
        return "Cloud TPU pod"
    return None


def _check_distributed_flags(args) -> dict | None:
    """The keyword arguments of jax.distributed.initialize for these flags, or None for a plain process."""
    explicit = [f"--{k}" for k in ("coordinator_address", "num_processes", "process_id", "local_device_ids")
                if getattr(args, k) is not None]
    detected = cluster_environment()
    if not explicit and not args.distributed and detected is None:
        return None
    if args.initialization_timeout < 1:
        raise DistributedError(f"--initialization_timeout={args.initialization_timeout} must be >= 1 (seconds)")
    if args.heartbeat_timeout < 1:
        raise DistributedError(f"--heartbeat_timeout={args.heartbeat_timeout} must be >= 1 (seconds)")
    auto = detected is not None or args.distributed  # jax fills in what the flags leave out
    n, i, address = args.num_processes, args.process_id, args.coordinator_address
    if n is not None and n < 1:
        raise DistributedError(f"--num_processes={n} must be >= 1")
    if i is not None and n is not None and not 0 <= i < n:
        raise DistributedError(f"--process_id={i} is out of range for --num_processes={n} (0 .. {n - 1})")
    if i is not None and i < 0:
        raise DistributedError(f"--process_id={i} must be >= 0")
    if not auto:
        if address is None:
            raise DistributedError(f"{' '.join(explicit)} given without --coordinator_address HOST:PORT "
                                   "(the address of process 0, the same on every process)")
        missing = [f"--{k}" for k, v in (("num_processes", n), ("process_id", i)) if v is None]
        if missing:
            raise DistributedError(f"--coordinator_address={address} needs {' and '.join(missing)} too "
                                   "(or run inside a cluster job whose environment jax reads)")
    if address is not None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DistributedError(f"--coordinator_address={address!r} is not HOST:PORT")
    device_ids = None
    if args.local_device_ids is not None:
        try:
            device_ids = [int(d) for d in args.local_device_ids.split(",") if d.strip()]
        except ValueError:
            raise DistributedError(f"--local_device_ids={args.local_device_ids!r} is not a comma-separated "
                                   "list of integers") from None
    return {"coordinator_address": address, "num_processes": n, "process_id": i, "local_device_ids": device_ids,
            "heartbeat_timeout_seconds": args.heartbeat_timeout, "detected": detected}


def initialize_distributed(options: dict, timeout_s: int) -> None:
    """jax.distributed.initialize with the gloo CPU collectives, ending with DistributedError (never a hang)
    when the job cannot be joined within `timeout_s`.

    jax aborts the process (SIGABRT, no Python exception) when its own initialization timeout passes, so a
    watcher thread ends it first, with one line and exit status 2.
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    options = dict(options)
    detected = options.pop("detected")
    where = options["coordinator_address"] or f"the coordinator of the {detected or 'detected'} job"
    who = (f"process {options['process_id']} of {options['num_processes']}"
           if options["process_id"] is not None and options["num_processes"] is not None else "this process")
    joined = threading.Event()

    def watch():
        if not joined.wait(timeout_s):
            sys.stderr.write(f"error: {who} could not join the job at {where} within --initialization_timeout="
                             f"{timeout_s} s: check that all processes were started with the same "
                             "--coordinator_address and --num_processes, and that the address is reachable\n")
            sys.stderr.flush()
            os._exit(EXIT_BAD_INPUT)

    threading.Thread(target=watch, name="contrastive-join-watcher", daemon=True).start()
    try:
        jax.distributed.initialize(**options, initialization_timeout=timeout_s + 30)
    except Exception as e:  # noqa: BLE001 - jax raises RuntimeError, ValueError, XlaRuntimeError ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(f"{who} could not join the job at {where}: {reason}") from None
    finally:
        joined.set()


def run(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        options = _check_distributed_flags(args)
        if options is not None:
            # Before anything else touches jax: initialize must come before the first computation.
            initialize_distributed(options, args.initialization_timeout)
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Import after parsing so that --help is instant.
    from contrastive.parallel.coordination import CoordinationError
    from contrastive.train import config as config_lib
    from contrastive.train.checkpoint import CheckpointError
    from contrastive.train.runner import Interrupted, NonFiniteLossError, train_and_evaluate

    try:
        config = config_lib.load_config(args.config, config_lib.parse_overrides(rest))
        train_and_evaluate(config, args.workdir)
    except (config_lib.ConfigError, CheckpointError, CoordinationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except Interrupted as e:
        if _is_primary():
            print(str(e), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _is_primary() -> bool:
    import jax

    return jax.process_index() == 0


if __name__ == "__main__":
    sys.exit(run())
