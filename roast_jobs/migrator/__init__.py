"""Moving waiting jobs between the legacy table and Celery, both ways, losing and
duplicating nothing (``roast-jobs migrate``)."""

from .run import Direction, Summary, migrate

__all__ = ["Direction", "Summary", "migrate"]
