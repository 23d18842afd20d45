"""No-op task: returns its arguments."""


def run(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}
