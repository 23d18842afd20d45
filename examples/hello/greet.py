# greet.py: session.submit("greet.py", "Ada", greeting="hi") -> "hi, Ada"
def run(name, greeting="hello"):
    return f"{greeting}, {name}"
