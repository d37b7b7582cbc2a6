"""``python -m rnnfast.bench [bench|profile] ARGS``: the same as ``rnnfast bench`` / ``rnnfast profile``."""

import sys

from rnnfast.bench.cli import main_bench, main_profile

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "profile":
        sys.exit(main_profile(args[1:]))
    sys.exit(main_bench(args[1:] if args and args[0] == "bench" else args))
