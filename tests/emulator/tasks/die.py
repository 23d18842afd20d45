import os


def run(code=3):
    os._exit(code)
