"""Runs analyse() for queued analyses. Placeholder: synchronous until the job runner lands."""
from flask import Flask


def init_app(app: Flask) -> None:
    pass


def enqueue(analysis_id: int) -> None:
    from utils.analysis import analyse

    analyse(analysis_id)
