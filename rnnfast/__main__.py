from rnnfast.cli import main

raise SystemExit(main())
