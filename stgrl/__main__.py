"""``python -m stgrl`` is the ``stgrl`` command."""

import sys

from stgrl.orchestration.cli import main

sys.exit(main())
