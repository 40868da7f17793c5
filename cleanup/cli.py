"""``retrace-server-cleanup [--dry-run] [-v]``, hourly from cron or a systemd timer.

Exit status: 0 done, 1 configuration error (the message says which key).
Every action is logged to ``<LogDir>/cleanup.log`` (or syslog: ``LogTo``) and printed.
"""

import argparse
import logging
import os
import sys

from retrace_server.cleanup.collector import Collector
from retrace_server import add_version_argument
from retrace_server.adminlog import admin_handler
from retrace_server.config import ConfigError, config_path, load_config
from retrace_server.privileges import PrivilegeError, add_service_arguments, run_as_service_user

PROG = "retrace-server-cleanup"


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Expire tasks, stop stuck workers, trim the package cache.")
    add_version_argument(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print what is left alone and why")
    add_service_arguments(parser)
    return parser


def check_expiry_settings(config):
    if 0 < config.DeleteTaskAfter < config.DeleteFailedTaskAfter:
        raise ConfigError(
            f"DeleteTaskAfter ({config.DeleteTaskAfter} h) is shorter than DeleteFailedTaskAfter "
            f"({config.DeleteFailedTaskAfter} h): failed tasks would outlive successful ones"
        )


def make_log(config, verbose, dry_run):
    log = logging.getLogger("retrace.cleanup")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if not dry_run:
        log.addHandler(admin_handler(config, "cleanup", "%(asctime)s %(levelname)s %(message)s"))
    return log


def main(argv=None):
    args = build_parser().parse_args(argv)
    path = config_path(os.environ, args.config)
    try:
        config = load_config(path)
        check_expiry_settings(config)
        run_as_service_user(args.user)
    except (ConfigError, PrivilegeError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    log = make_log(config, args.verbose, args.dry_run)
    Collector(config, path, log, dry_run=args.dry_run).run()
    return 0
