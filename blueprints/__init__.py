"""Blueprints: thin views that parse the request, call a service and render."""
from flask import Flask


def register_all(app: Flask) -> None:
    pass
