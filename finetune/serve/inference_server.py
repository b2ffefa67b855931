"""``python -m finetune.serve.inference_server [azmlinfsrv arguments]``: azmlinfsrv bound to 127.0.0.1.

azmlinfsrv (azureml-inference-server-http 1.4/1.5) always binds 0.0.0.0 and has no flag to change it;
its ``run()`` reads the module global ``amlserver.DEFAULT_HOST`` when it starts gunicorn, so setting
that first keeps a local deployment off every other interface. Arguments are azmlinfsrv's own
(``--entry_script``, ``--model_dir``, ``--port``, ``--worker_count``).
"""
from __future__ import annotations

def main() -> None:
    from azureml_inference_server_http import amlserver

    if not hasattr(amlserver, "DEFAULT_HOST"):
        raise SystemExit("this azureml-inference-server-http has no amlserver.DEFAULT_HOST; cannot bind to loopback")
    amlserver.DEFAULT_HOST = "127.0.0.1"
    amlserver.run()


if __name__ == "__main__":
    main()
