"""Same as ``nemo-resrl convert to-hf ARGS`` (see nemo_resrl/convert/cli.py)."""

import sys

from nemo_resrl.convert.cli import main

if __name__ == "__main__":
    sys.exit(main(["to-hf", *sys.argv[1:]]))
