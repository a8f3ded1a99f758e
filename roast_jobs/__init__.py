"""roast-jobs: a PostgreSQL job system for Celery."""

from . import broker as _broker  # registers the postgresql:// transport

__version__ = "0.1.0"
__all__ = ["__version__"]
del _broker
