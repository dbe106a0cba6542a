"""`python -m cagnet` runs the command line (also under torchrun)."""

import sys

from cagnet.cli import main

sys.exit(main())
