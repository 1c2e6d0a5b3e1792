from dsaml_utils.cli import main

raise SystemExit(main())
