"""Run by tests/integration/test_process_faults.py: the wellfed command, with multiprocessing's
semaphore prefix set, so that the test can tell this run's /dev/shm entries from any other's.

Usage: python wellfed_semprefix.py PREFIX COMMAND [ARGS...]

Every named semaphore that this process and the processes it forks create is then
/dev/shm/sem.PREFIX-<random> (multiprocessing names them "<semprefix>-<random>"; the default
prefix is "/mp"). SIGTERM and SIGHUP start at their default actions, as in a terminal (a test
runner under nohup would pass SIGHUP on ignored). Otherwise this is ``wellfed COMMAND
ARGS...``: ``wellfed.cli.main``.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing import process

from wellfed.cli import main

if __name__ == "__main__":
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    process.current_process()._config["semprefix"] = "/" + sys.argv[1]
    sys.exit(main(sys.argv[2:]))
