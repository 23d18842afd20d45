from engine.azbatchengine import AzureBatchEngine


def do_action(engine, args):
    if args and args[0] == "fail":
        return None, "could not do " + " ".join(args[1:])
    return "task #2 got %d words" % len(args), "no error"
