"""``python -m ppl_vae`` is the ``ppl-vae`` command."""

import sys

from ppl_vae.cli import main

sys.exit(main())
