"""``python -m helpers``: the runbook's command line (see helpers.runner)."""
import sys

from .runner import main

sys.exit(main())
