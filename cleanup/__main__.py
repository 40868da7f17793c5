from __future__ import annotations

import sys

from retrace_server.cleanup.cli import main

sys.exit(main())
