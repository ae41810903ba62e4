"""`python -m bench grpc | kafka | sweep` (bench/cli.py)."""

import sys

from bench.cli import main

sys.exit(main())
