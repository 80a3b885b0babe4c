"""``python -m helpers.fleet prepare|run|index``: one host's part, called by the playbook."""
import sys

sys.modules.setdefault("rfc3987_syntax", None)  # as helpers/__main__.py: a second saved at every start

from .command import host_main  # noqa: E402

sys.exit(host_main())
