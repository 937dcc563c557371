#!/usr/bin/env python3
"""Run a fedsock worker: ``python worker.py --chief HOST:PORT --data ./shard``."""

import sys

from fedsock.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="worker.py", command="worker"))
