"""``python -m vitmsn`` (and ``torchrun -m vitmsn``) runs the command line."""

import sys

from vitmsn.cli import main

sys.exit(main())
