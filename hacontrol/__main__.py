"""``python -m hacontrol`` is the CLI."""

from hacontrol.cli import main

raise SystemExit(main())
