"""``make_celery`` lives in ``roast_jobs.jobs.celery_app`` (the service layer sends with
it); kept importable from here."""

from roast_jobs.jobs.celery_app import celery_config, make_celery

__all__ = ["celery_config", "make_celery"]
