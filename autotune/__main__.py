"""`python -m autotune`: the same as the `autotune` console script."""

from __future__ import annotations

import sys

from autotune.cli.app import main

sys.exit(main())
