from engine.azbatchengine import AzureBatchEngine  # noqa: F401 (as the prototype did)


def do_action(engine, args):
    if args and args[0] == "fail":
        return None, "could not do " + " ".join(args[1:])
    return f"task #2 got {len(args)} words", "no error"
