import atexit
import os
import sys

from .cli import main
from .errors import ExitStatus

# Guarded: decoding worker processes are started with "spawn", which imports
# the main module again under another name.
if __name__ == "__main__":
    status = main()
    if status == ExitStatus.INTERRUPTED:
        # Interrupted means "stop now": everything was cleaned up before main
        # returned, and tearing down the imported modules (SciPy, h5py,
        # Matplotlib) takes seconds on a busy machine. Exit handlers still run.
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()
        os._exit(status)
    sys.exit(status)
