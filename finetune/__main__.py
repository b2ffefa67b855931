from finetune.cli.main import main

raise SystemExit(main())
