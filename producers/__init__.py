"""The ways jobs come in. ``from producers import submit``."""

from producers.submit import Priority, submit, submit_many

__all__ = ["Priority", "submit", "submit_many"]
