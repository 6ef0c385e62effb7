"""The WSGI entry point gunicorn loads in each worker."""

from api.app import from_environment

application = from_environment()
