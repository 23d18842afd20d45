"""Creates a marker file in the working directory, then sleeps."""

import time
from pathlib import Path


def run(marker, seconds=1.0):
    Path(marker).touch()
    time.sleep(seconds)
    return "slept"
