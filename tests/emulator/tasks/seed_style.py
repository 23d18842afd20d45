import os


def do_action(engine, args):
    return {"cwd_has_input": os.path.exists("input.txt"), "args": list(args)}, "no error"
