"""``python -m mypkg --version`` and ``python -m mypkg serve --check``: a stand-in CLI."""

import os
import sys

if sys.argv[1:] == ["--version"]:
    print("mypkg 1.0")
elif sys.argv[1:] == ["serve", "--check"]:
    print("config ok" + (" (debug)" if os.environ.get("MYPKG_DEBUG") == "1" else ""))
else:
    sys.exit("usage: python -m mypkg --version | serve --check")
