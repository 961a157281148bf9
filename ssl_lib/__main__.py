"""``python -m ssl_lib study|book ...``: see :mod:`ssl_lib.study`."""

import sys

from .study import main

sys.exit(main())
