"""The smallest task, in the seed's ``do_action`` style.

``session.submit("hello.py", "world")`` returns ``"Hello, world! (from ENGINE-ID)"``.
"""

from __future__ import annotations


def do_action(engine, args):
    """Greet ``args[0]`` (default: "world"); returns ``(result, error)``."""
    name = args[0] if args else "world"
    return f"Hello, {name}! (from {engine.engine_id})", "no error"
