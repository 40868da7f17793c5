from __future__ import annotations

import sys

from retrace_server.worker.cli import main

sys.exit(main())
