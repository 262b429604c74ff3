"""``python -m portsafe``: the command line."""

import sys

from portsafe._cli.main import main

sys.exit(main())
