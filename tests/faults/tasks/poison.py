"""A poison task: kills the process running it, every time."""

import os
import signal


def run(how="worker"):
    if how == "engine":  # the worker's parent is the engine
        os.kill(os.getppid(), signal.SIGKILL)
        signal.pause()
    os._exit(9)
