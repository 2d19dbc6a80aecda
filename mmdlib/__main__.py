"""`python -m mmdlib`: the `mmdlib` command (mmdlib.cli)."""
import sys

from mmdlib.cli import main

sys.exit(main())
