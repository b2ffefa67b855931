"""``python -m finetune.serve.inference_server [azmlinfsrv arguments]``: azmlinfsrv reachable only by its router.

azmlinfsrv (azureml-inference-server-http 1.4/1.5) always binds 0.0.0.0 and has no flag to change it, and
it checks no key: on AML nothing reaches a deployment except through the endpoint, but on a shared machine
any local user could POST to a deployment's TCP port and skip the router's key check. With
``FINETUNE_BIND_SOCKET=<path>`` gunicorn listens on that Unix socket instead of any TCP port: the socket
sits in a folder only this user can enter (0700), so the router, running as this user, is the one way
in. azmlinfsrv's ``amlserver_linux.run`` builds gunicorn's ``-b host:port`` and then looks
``gunicorn.app.wsgiapp.WSGIApplication`` up when it starts, so a subclass that replaces the bind after
gunicorn parsed its arguments takes effect. Without the variable it binds 127.0.0.1 (``amlserver.DEFAULT_HOST``).
Arguments are azmlinfsrv's own (``--entry_script``, ``--model_dir``, ``--port``, ``--worker_count``).
"""
from __future__ import annotations

import os

BIND_SOCKET_ENV = "FINETUNE_BIND_SOCKET"


def main() -> None:
    from azureml_inference_server_http import amlserver

    socket_path = os.environ.get(BIND_SOCKET_ENV)
    if socket_path:
        import gunicorn.app.wsgiapp as wsgiapp

        class UnixSocketOnly(wsgiapp.WSGIApplication):
            def load_config(self):
                super().load_config()
                self.cfg.set("bind", [f"unix:{socket_path}"])

        wsgiapp.WSGIApplication = UnixSocketOnly
    elif hasattr(amlserver, "DEFAULT_HOST"):
        amlserver.DEFAULT_HOST = "127.0.0.1"
    else:
        raise SystemExit("this azureml-inference-server-http has no amlserver.DEFAULT_HOST; cannot bind to loopback")
    amlserver.run()


if __name__ == "__main__":
    main()
