"""A child process that reserves ports and holds them until told to stop.

Run as ``python tests/children/holder.py [reserve_ports kwargs as JSON]``: prints the ports as
JSON on one line, then holds them until stdin closes (or it is killed).
"""

from __future__ import annotations

import json
import sys

import portsafe


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    count = options.pop("n", 1)
    if "ports" in options:
        options["ports"] = range(*options["ports"])
    group = portsafe.reserve_ports(count, **options)
    print(json.dumps(group.ports), flush=True)
    sys.stdin.read()
    group.release()


if __name__ == "__main__":
    main()
