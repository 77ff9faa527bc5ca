"""``python -m tools.bench``: the whole benchmark (:mod:`tools.bench.suite`)."""
import sys

from tools.bench.suite import main

sys.exit(main())
