"""WSGI entry point: ``gunicorn kakuin.wsgi:app`` (home from $KAKUIN_HOME, default ./var)."""

from kakuin.app import create_app

app = create_app()
