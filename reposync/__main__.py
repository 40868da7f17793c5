from __future__ import annotations

import sys

from retrace_server.reposync.cli import main

sys.exit(main())
