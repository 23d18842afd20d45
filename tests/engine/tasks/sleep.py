"""Sleeps, then returns how long it slept."""

import time


def run(seconds=1.0):
    time.sleep(seconds)
    return seconds
