"""Simulators of the destination APIs, faithful to their documented behaviour.
Used by tests and the demo to exercise the worker over real HTTP."""
