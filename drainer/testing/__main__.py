"""``python -m drainer.testing web PORT NAME DELAY``: the lab's web server in a process of
its own (``drainer.testing.lab.WebProcess`` starts it)."""

import sys

from drainer.testing.lab import main

sys.exit(main(sys.argv[1:]))
