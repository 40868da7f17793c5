"""``retrace-server-dispatcher``: the one process that starts workers for queued tasks and ends dead workers' tasks.

``retrace-server-httpd`` runs it beside Apache, as it runs the debuginfod
relay; on a system install ``config/systemd/retrace-server-dispatcher.service``
does.  It prints one line once it listens, so whoever starts it knows when
uploads will be picked up.
"""

import argparse
import logging
import os
import sys

from retrace import dispatch
from retrace.config import ConfigError, config_path, load_config
from retrace.privileges import PrivilegeError, add_service_arguments, append_stderr_to, run_as_service_user

PROG = "retrace-server-dispatcher"


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Start retrace workers for queued tasks as slots free up.")
    add_service_arguments(parser)
    parser.add_argument("--log", help="append messages to this file instead of standard error")
    args = parser.parse_args(argv)
    path = config_path(os.environ, args.config)
    try:
        config = load_config(path)
        run_as_service_user(args.user)
    except (ConfigError, PrivilegeError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    os.umask(0o027)
    if args.log:
        append_stderr_to(args.log)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=f"{PROG}: %(levelname)s: %(message)s")
    dispatch.serve(config, path, ready=lambda: print(f"{PROG}: listening on {dispatch.socket_path(config)}",
                                                     flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
