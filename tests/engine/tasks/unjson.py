"""Returns a value that is not JSON."""


def run():
    return {1, 2, 3}
