from vaerepro.cli import main

raise SystemExit(main())
