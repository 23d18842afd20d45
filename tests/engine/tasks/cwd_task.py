"""Reads an input file from the working directory."""

import os
from pathlib import Path


def run(name):
    return {"cwd": os.getcwd(), "text": Path(name).read_text()}
