from __future__ import annotations

import sys

from retrace_server.client.cli import main

sys.exit(main())
