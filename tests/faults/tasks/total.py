"""The reduce step of the workflow fault scenario: the sum of its inputs' values."""


def run(values):
    return sum(values)
