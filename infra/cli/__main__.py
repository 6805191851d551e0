"""`python -m infra.cli`: the same as `cardinal`."""

import sys

from infra.cli import main

sys.exit(main())
