"""``python -m benchmarks.peers setup numpyro|pythae|all`` and ``python -m benchmarks.peers status``."""

import sys

from benchmarks.peers import main

sys.exit(main())
