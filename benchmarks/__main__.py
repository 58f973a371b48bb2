"""``python -m benchmarks SCENARIO [options]``: see `benchmarks.suite` and
benchmarks/README.md."""

from __future__ import annotations

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
