"""The supportbot Django project."""

# Loading the Celery app with Django means tasks' delay_on_commit uses its settings.
from supportbot.celery import app as celery_app

__all__ = ["celery_app"]
