"""The Azure ML side, emulated on this machine for the tests: :mod:`.recorder` (a local HTTPS stand-in for AML's
REST API and its MLflow surface) and :mod:`.emulator` (runs an exported ``<run>/aml`` tree the way AML runs it;
``python scripts/aml_emulate.py`` is its command line)."""
