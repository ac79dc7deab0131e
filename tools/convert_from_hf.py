"""Same as ``nemo-resrl convert from-hf ARGS`` (see nemo_resrl/convert/cli.py)."""

import sys

from nemo_resrl.convert.cli import main

if __name__ == "__main__":
    sys.exit(main(["from-hf", *sys.argv[1:]]))
