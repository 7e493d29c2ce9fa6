"""gunicorn settings of the production web server (docker-compose, Procfile.scale, the bench).

    gunicorn -c deploy/gunicorn.conf.py cxrplatform.wsgi:application

Processes x threads (``gthread``): a request spends part of its time waiting for
PostgreSQL, Redis or the upload's decoder child, so a few threads per process keep a
core busy, and one process per core keeps the interpreter lock from capping a core.
Chosen by measurement with ``python -m bench.e2e --web-sweep`` (docs/operations.md,
"Web server"): on 2 cores, 2 processes x 8 threads served the case list and case detail
fastest under 20 clients in both sweeps; more processes than cores were slower. The
sweeps ran on a machine shared with heavy jobs (load average 9-20), so read them as a
ranking, not as figures. ``WEB_CONCURRENCY`` (processes; default: the CPUs this
container may use, at least 2, at most 4) and ``CXR_WEB_THREADS`` (default 8) override
it.
"""

import os

_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", min(4, max(2, _cpus))))
threads = int(os.environ.get("CXR_WEB_THREADS", "8"))
worker_class = "gthread"
timeout = 60
# Keep-alive connections from the proxy (and API clients that poll) are reused.
keepalive = 5
# Recycle a process now and then (memory fragmentation of long-lived processes), not
# all at once.
max_requests = 5000
max_requests_jitter = 500
