import time


def run(seconds):
    time.sleep(seconds)
    return seconds
