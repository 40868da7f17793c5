import sys

from retrace_server.worker.cli import main

sys.exit(main())
