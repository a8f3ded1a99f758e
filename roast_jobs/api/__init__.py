"""The HTTP API: ``create_app`` (see ``app``)."""

from .app import create_app

__all__ = ["create_app"]
