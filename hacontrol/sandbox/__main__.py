"""`python -m hacontrol.sandbox up|down|status` (the same as `hacontrol sandbox ...`)."""

import sys

from hacontrol.sandbox.cli import main

sys.exit(main(["sandbox", *sys.argv[1:]]))
