"""`python -m rl.bench NAME [options]`: the benchmarks' front door (they live in rl/tools)."""

import sys

from rl.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
