"""The ways jobs come in. ``from producers import submit``."""

from producers.submit import Priority, Version, enqueue, submit, submit_many

__all__ = ["Priority", "Version", "enqueue", "submit", "submit_many"]
