"""``python -m portsafe``: the command line."""

import sys

from portsafe._cli import main

sys.exit(main())
