"""The seed's contract: do_action(engine, args) -> (result, error)."""


def do_action(engine, args):
    if args and args[0] == "fail":
        return None, "could not do it"
    if args and args[0] == "contract":
        return "not a pair"
    return {"sum": sum(args), "engine": engine.engine_id, "task": engine.task_id}, "No Error"
