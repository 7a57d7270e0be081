"""Operator commands (`flask --app app ...`): each area registers its own group here."""
from flask import Flask


def register_commands(app: Flask) -> None:
    pass
    from utils.jobs_cli import register; register(app)
