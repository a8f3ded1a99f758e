"""Rollout control: how the move from the legacy queue to Celery is going, and whether it
must be rolled back (``roast-jobs rollout status|check|set``).

``status.collect`` reads one snapshot from the database; ``checks.evaluate`` judges it
against the plan's rollback triggers (the ``rollout_*`` settings).
"""
