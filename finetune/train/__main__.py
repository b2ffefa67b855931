"""``python -m finetune.train``: the one training entry point (:mod:`finetune.train.command_line` around :mod:`finetune.train.entry`)."""

from finetune.train.command_line import main

raise SystemExit(main())
