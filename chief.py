#!/usr/bin/env python3
"""Run a fedsock chief: ``python chief.py --port 7777`` (same as ``fedsock chief``)."""

import sys

from fedsock.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="chief.py", command="chief"))
