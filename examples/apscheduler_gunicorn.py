"""A Flask app under gunicorn with several workers; its scheduled jobs run in one worker of the fleet.

Every worker starts the same BackgroundScheduler after the fork; the job store is leader-only, so the
jobs run in the worker holding the Consul key (on this host, or on any other host running the app).
Needs ``pip install flask gunicorn``. Against the local agent (``CONSUL_HTTP_ADDR``, default
127.0.0.1:8500; ``consul agent -dev``), one command::

    python examples/apscheduler_gunicorn.py                 # gunicorn, 3 workers, http://127.0.0.1:8000

or with the gunicorn command, this file being both the app and the gunicorn configuration::

    gunicorn --config examples/apscheduler_gunicorn.py --chdir examples apscheduler_gunicorn:app

``curl http://127.0.0.1:8000/`` answers from whichever worker took the request, and says whether that
worker runs the jobs and which one does. Stop the leading worker (``kill <pid>``): gunicorn starts a new
one and another worker takes over the jobs at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from typing import Any

from apscheduler.jobstores.memory import MemoryJobStore  # type: ignore[import-untyped, unused-ignore]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped, unused-ignore]

try:
    from flask import Flask, jsonify  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    if __name__ != "__main__":
        raise
    print(
        "apscheduler_gunicorn.py: needs Flask and gunicorn: pip install 'consul-singleton[examples]' "
        "(from a checkout: pip install '.[examples]')",
        file=sys.stderr,
    )
    sys.exit(1)

import singleton
from singleton.contrib.apscheduler import LeaderOnlyJobStore

KEY = "examples/apscheduler-gunicorn"
#: A fixed start_date: every worker agrees on the scheduled times.
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
runs_here = 0


def purge_expired_sessions() -> None:
    global runs_here
    runs_here += 1
    print(f"[worker {os.getpid()}] purged expired sessions (term fence {singleton.current_token().fence})", flush=True)


def create_app() -> Any:
    store = LeaderOnlyJobStore(MemoryJobStore(), key=KEY)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=timezone.utc)
    scheduler.add_job(purge_expired_sessions, "interval", seconds=3, start_date=START, id="purge")
    flask_app = Flask(__name__)
    # Not started here: this may run in gunicorn's master before the fork. post_worker_init starts it.
    flask_app.extensions["scheduler"] = scheduler

    @flask_app.get("/")  # type: ignore[untyped-decorator, unused-ignore]
    def status() -> Any:
        election = store.election
        return jsonify(
            worker=os.getpid(),
            runs_the_jobs=store.is_leader,
            leader=election.holder if election is not None else None,
            runs_in_this_worker=runs_here,
        )

    return flask_app


app = create_app()

# -- gunicorn configuration (read when this file is given with --config) -------------------------------

workers = 3
bind = "127.0.0.1:8000"


def post_worker_init(worker: Any) -> None:
    """In each worker, after the fork: configure singleton and start the scheduler.

    Both belong after the fork: threads do not survive it, and the settings name the process that holds
    the key (``hostname:pid``), which must be the worker's pid, not the master's.
    """
    singleton.configure(ttl=10)  # Consul address and token from CONSUL_HTTP_* variables
    worker.wsgi.extensions["scheduler"].start()


def worker_exit(server: Any, worker: Any) -> None:
    """A worker stopping hands the jobs over at once: shutdown() resigns the Consul key."""
    scheduler = worker.wsgi.extensions["scheduler"] if hasattr(worker, "wsgi") else None
    if scheduler is not None and scheduler.running:
        scheduler.shutdown()


def main() -> int:
    from apscheduler_demo import EXIT_NO_AGENT, require_agent  # the launcher next to this file

    if not require_agent(__file__):
        return EXIT_NO_AGENT
    from gunicorn.app.base import BaseApplication  # type: ignore[import-not-found, import-untyped, unused-ignore]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=workers)
    parser.add_argument("--bind", default=bind)
    args = parser.parse_args()

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "workers": args.workers,
                "bind": args.bind,
                "post_worker_init": post_worker_init,
                "worker_exit": worker_exit,
            }
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            return app

    print(f"gunicorn with {args.workers} workers on http://{args.bind}/ (Ctrl-C stops it)", flush=True)
    Server().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
