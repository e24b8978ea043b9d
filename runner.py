#!/usr/bin/env python3
"""Run the medqlora notebook chain for one or more params files. See `python runner.py --help` and README.md."""
import sys

from medqlora.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
