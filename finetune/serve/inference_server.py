"""``python -m finetune.serve.inference_server [azmlinfsrv arguments]``: azmlinfsrv reachable only by its router.

azmlinfsrv (azureml-inference-server-http 1.4/1.5) always binds 0.0.0.0 and has no flag to change it, and
it checks no key: on AML nothing reaches a deployment except through the endpoint, but on a shared machine
any local user could POST to a deployment's TCP port and skip the router's key check. With
``FINETUNE_BIND_SOCKET=<path>`` gunicorn listens on that Unix socket instead of any TCP port: the socket
sits in a folder only this user can enter (0700), so the router, running as this user, is the one way
in. azmlinfsrv's ``amlserver_linux.run`` builds gunicorn's ``-b host:port`` and then looks
``gunicorn.app.wsgiapp.WSGIApplication`` up when it starts, so a subclass that replaces the bind after
gunicorn parsed its arguments takes effect. Without the variable it binds 127.0.0.1 (``amlserver.DEFAULT_HOST``).
Its workers die with the server process (``post_fork`` sets PR_SET_PDEATHSIG), as the server dies with the
command that started it (:mod:`finetune.system.processes`).
Arguments are azmlinfsrv's own (``--entry_script``, ``--model_dir``, ``--port``, ``--worker_count``).
"""

from __future__ import annotations

import os
import signal
import sys

from finetune.system.processes import PR_SET_PDEATHSIG

BIND_SOCKET_ENV = "FINETUNE_BIND_SOCKET"


def _worker_dies_with_master(_server, _worker) -> None:
    """gunicorn's post_fork hook: a sync worker notices a dead master only between requests, after up to
    half its (AML default 300 s) timeout, or never while init() loads the model; the kernel is faster."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main() -> None:
    import gunicorn.app.wsgiapp as wsgiapp
    from azureml_inference_server_http import amlserver

    socket_path = os.environ.get(BIND_SOCKET_ENV)
    if not socket_path:
        if not hasattr(amlserver, "DEFAULT_HOST"):
            raise SystemExit(
                "this azureml-inference-server-http has no amlserver.DEFAULT_HOST; cannot bind to loopback"
            )
        amlserver.DEFAULT_HOST = "127.0.0.1"

    class Server(wsgiapp.WSGIApplication):
        def load_config(self):
            super().load_config()
            self.cfg.set("post_fork", _worker_dies_with_master)
            if socket_path:
                self.cfg.set("bind", [f"unix:{socket_path}"])

    wsgiapp.WSGIApplication = Server
    amlserver.run()


if __name__ == "__main__":
    main()
