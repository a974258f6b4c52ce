"""The ways jobs come in. ``from producers import submit``."""

from producers.submit import Priority, enqueue, submit, submit_many

__all__ = ["Priority", "enqueue", "submit", "submit_many"]
