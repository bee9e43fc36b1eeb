"""``python -m seekoci``: the same program as the ``seekoci`` command."""

from .cli import main

raise SystemExit(main())
