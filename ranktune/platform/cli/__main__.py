from ranktune.platform.cli.main import main

raise SystemExit(main())
