from shelfsight.cli import main

raise SystemExit(main())
