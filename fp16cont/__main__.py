"""``python -m fp16cont``: see :mod:`fp16cont.cli`."""

import sys

from fp16cont.cli import main

sys.exit(main())
