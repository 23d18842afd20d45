"""Raises the exception named by its first argument."""


class FlakyError(Exception):
    pass


def run(kind="ValueError", message="boom"):
    if kind == "FlakyError":
        raise FlakyError(message)
    raise ValueError(message)
