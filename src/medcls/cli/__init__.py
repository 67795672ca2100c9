"""Command line: ``medcls train | calibrate | evaluate | predict | export | serve | data ... | config show``."""

from .main import app, main

__all__ = ["app", "main"]
