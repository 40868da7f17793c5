"""``retrace-server-cleanup [--dry-run] [-v] [--rebucket | --reindex]``, hourly from cron or a systemd timer.

Exit status: 0 done, 2 configuration error (the message says which key).
Every action is logged to ``<LogDir>/cleanup.log`` (or syslog: ``LogTo``) and printed.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from retrace_server import add_version_argument, service
from retrace_server.adminlog import admin_handler
from retrace_server.cleanup.collector import Collector
from retrace_server.errors import ConfigError
from retrace_server.privileges import add_service_arguments
from retrace_server.reports import rules
from retrace_server.reports.buckets import BucketDB

if TYPE_CHECKING:
    from collections.abc import Sequence

    from retrace_server.config import Config

PROG = "retrace-server-cleanup"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Expire tasks, stop stuck workers, trim the package cache.")
    add_version_argument(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print what is left alone and why")
    parser.add_argument("--rebucket", action="store_true",
                        help="recompute every crash bucket's signature under the current SignatureRules (buckets "
                             "merge or split; counts, reports and bugs move with them), then stop")
    parser.add_argument("--reindex", action="store_true",
                        help="make the spool's markers of tasks not yet ended agree with the task directories (a "
                             "task made by hand is found) and build this host's task index from every task directory, "
                             "then stop")
    add_service_arguments(parser)
    return parser


def check_expiry_settings(config: Config) -> None:
    if 0 < config.DeleteTaskAfter < config.DeleteFailedTaskAfter:
        raise ConfigError(
            f"DeleteTaskAfter ({config.DeleteTaskAfter} h) is shorter than DeleteFailedTaskAfter "
            f"({config.DeleteFailedTaskAfter} h): failed tasks would outlive successful ones"
        )


def make_log(config: Config, verbose: bool, dry_run: bool) -> logging.Logger:
    log = logging.getLogger("retrace.cleanup")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if not dry_run:
        log.addHandler(admin_handler(config, "cleanup", "%(asctime)s %(levelname)s %(message)s"))
    return log


@service.command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config, path = service.load(args)
    check_expiry_settings(config)
    log = make_log(config, args.verbose, args.dry_run)
    if args.rebucket:
        return rebucket(config, log, args.dry_run)
    if args.reindex:
        Collector(config, path, log, dry_run=args.dry_run).reindex(full=True)
        return 0
    Collector(config, path, log, dry_run=args.dry_run).run()
    return 0


def rebucket(config: Config, log: logging.Logger, dry_run: bool) -> int:
    """The stored buckets recomputed under the rules SignatureRules names now (ConfigError: a bad rules file)."""
    current = {kind: rules.load(config.SignatureRules, kind) for kind in rules.KINDS}
    if dry_run:
        log.info("would: recompute the crash buckets under %s", config.SignatureRules)
        return 0
    with BucketDB.for_config(config) as buckets:
        before, after = buckets.rebucket(current.__getitem__)
    log.info("rebucketed %d crash buckets under %s: %d now", before, config.SignatureRules, after)
    return 0
