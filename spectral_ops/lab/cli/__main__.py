"""`python -m spectral_ops.lab.cli ...` (as under torchrun) is the `spectral-ops` command."""

import sys

from spectral_ops.lab.cli import main

sys.exit(main())
