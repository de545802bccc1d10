import sys

from .cli import main

# Guarded: decoding worker processes are started with "spawn", which imports
# the main module again under another name.
if __name__ == "__main__":
    sys.exit(main())
