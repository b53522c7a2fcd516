"""`python -m rl.sweep SWEEP.yaml [key=value ...]`: the reward-ablation sweeps' front door (rl/tools/sweep.py)."""

import sys

from rl.tools.sweep import main

if __name__ == "__main__":
    sys.exit(main())
