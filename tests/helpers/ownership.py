"""A child process holding a folder's lock: a second writer's view of a live run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .runs import REPO


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


class LockHolder:
    """A child process holding a folder's lock (a second writer's view of a live run)."""

    def __init__(self, folder: Path) -> None:
        code = (
            "import sys, time\nfrom classp_hf.continual.ownership import FolderLock\n"
            "lock = FolderLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=child_env()
        )
        assert self.process.stdout.readline().strip() == "locked"

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
