from fastims.cli import main

raise SystemExit(main())
