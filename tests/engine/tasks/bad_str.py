"""Raises an exception whose str() itself fails."""


class Weird(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


def run():
    raise Weird()
