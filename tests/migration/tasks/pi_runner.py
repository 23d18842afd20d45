from engine.azbatchengine import AzureBatchEngine  # noqa: F401 (as the prototype did)


def do_action(engine, args):
    # args is the prototype's command line, e.g. ["java", "-Xmx4096m", "-jar", "pi.jar", "100"]
    result = engine.java_runner(args)
    return result, "no error"
