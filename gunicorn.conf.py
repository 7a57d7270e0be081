"""Production web server settings, all from the environment.

Start: `gunicorn -c gunicorn.conf.py` (the app is `app:create_app()`, set below).
  WEB_CONCURRENCY   web worker processes (default 2; each is a separate Python process)
  PORT, HOST        where to listen (default 127.0.0.1:8000; HOST=0.0.0.0 behind a proxy on another host)
  GUNICORN_TIMEOUT  seconds a request may take before its worker is replaced (default 120: big uploads)
  FORWARDED_ALLOW_IPS  proxies whose X-Forwarded-* headers are trusted (default 127.0.0.1)
  GUNICORN_CONTROL_SOCKET  path for `gunicornc` (off by default)
  LOG_LEVEL         default info. Access and error logs go to stdout/stderr for the platform to collect.
"""
import os

wsgi_app = "app:create_app()"
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
capture_output = True
# gunicorn 25+ opens a control socket at one fixed path per user, which several servers on one
# machine (tests, benchmarks) would fight over: off unless a path is given.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket
# The app is loaded in each worker, after the fork: job threads and database pools never cross one.
preload_app = False


def post_worker_init(worker):
    """Start this worker's in-process job runner now rather than at its first request, so work
    left queued or running by a process that died is picked up as soon as the server is back.
    (No-op with REDIS_URL: the RQ workers do it.)"""
    app = worker.wsgi
    if getattr(app, "extensions", {}).get("jobs") is not None and app.config.get("JOB_RECOVER_ON_START"):
        from utils import jobs

        jobs.start(app)
