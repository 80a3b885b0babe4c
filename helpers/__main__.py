"""``python -m helpers``: the runbook's command line (see helpers.run)."""
import sys

# jsonschema (under nbformat) imports rfc3987_syntax, when installed, for one
# optional format check ("iri") that notebooks never use; building its grammar
# costs about a second at every start of the command line. Leave it out here.
sys.modules.setdefault("rfc3987_syntax", None)

from .run.cli import main  # noqa: E402

sys.exit(main())
