"""``python -m drip.cli``: the same as the ``drip`` command."""

import sys

from . import main

sys.exit(main())
