"""C connection table vs its Python twin, side by side in one run (same as `vnic bench table`).

    python -m benchmarks.bench_table --connections 1000000 --memory-connections 1000000
"""

import sys

from vnic.bench_table import main

if __name__ == "__main__":
    sys.exit(main())
