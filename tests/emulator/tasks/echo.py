def run(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}
