"""The ways jobs come in. ``from producers import submit``."""

from producers.submit import Priority, submit

__all__ = ["Priority", "submit"]
