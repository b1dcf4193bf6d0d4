"""``python -m ittrna`` = the ``ittrna`` command."""

from ittrna.cli import main

raise SystemExit(main())
