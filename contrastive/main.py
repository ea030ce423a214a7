"""Command line: `python -m contrastive.main --config configs/x.py[:arg] --workdir DIR [--config.a.b=v ...]`.

Also installed as the console script `contrastive-train`. Bad input ends with one line naming the problem
(exit status 2); a non-finite loss exits with 3; SIGTERM/SIGINT save a checkpoint and exit with 143.
"""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERRUPTED = 2, 3, 143


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        prog="contrastive-train", description=__doc__.splitlines()[0],
        epilog="Override any config field with --config.<key>=<value>, e.g. --config.optimizer.lr=0.3")
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and eval.json go here")
    return parser.parse_known_args(argv)


def run(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    # Import after parsing so that --help is instant.
    from contrastive.train import config as config_lib
    from contrastive.train.checkpoint import CheckpointError
    from contrastive.train.runner import Interrupted, NonFiniteLossError, train_and_evaluate

    try:
        config = config_lib.load_config(args.config, config_lib.parse_overrides(rest))
        train_and_evaluate(config, args.workdir)
    except (config_lib.ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(run())
