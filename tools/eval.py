"""Same as ``nemo-resrl eval ARGS`` (see nemo_resrl/evaluation/cli.py)."""

import sys

from nemo_resrl.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
