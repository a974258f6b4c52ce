"""The jobs: one module per destination (its models, answer table, client and Celery task), plus
the pieces they share: ``models`` (job model base), ``outcomes``, ``delivery`` (the base task)."""
