"""``python -m finetune.train``: the one training entry point (:mod:`finetune.train.entry`)."""

from finetune.train.entry import main

raise SystemExit(main())
