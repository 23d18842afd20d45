"""A small task: records that it ran (one file per run), sleeps, echoes its argument."""

import os
import time
import uuid


def run(value, seconds=0.02, runs_dir=None):
    if runs_dir:
        open(os.path.join(runs_dir, f"{value}-{uuid.uuid4().hex}"), "x").close()
    time.sleep(seconds)
    return value
