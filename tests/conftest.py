import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# The runner's per-L1 locks (helpers/runlock.py) of the whole suite live in a folder of
# its own, inherited by every runner the tests start: a `make run` lab running meanwhile
# (whose lock is in /run/nested-nvme) neither blocks the suite nor is blocked by it.
os.environ.setdefault("NESTED_NVME_LOCK_DIR", tempfile.mkdtemp(prefix="nested-nvme-test-locks-"))
