"""Same as ``nemo-resrl plot ARGS`` (see nemo_resrl/plotting.py)."""

import sys

from nemo_resrl.plotting import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
