import sys

from cleanup.cli import main

sys.exit(main())
