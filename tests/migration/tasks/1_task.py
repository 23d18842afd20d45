from engine.azbatchengine import AzureBatchEngine


def do_action(engine, args):
    # prototype style: list the words it was given, then answer with a pair
    assert isinstance(engine, AzureBatchEngine)
    print("task #1 in", engine.work_dir)
    words = ["seen:" + word for word in args]
    return words, "no error"
