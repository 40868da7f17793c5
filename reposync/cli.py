"""``retrace-server-reposync``: keep release repositories complete, from cron.

    retrace-server-reposync DISTRIBUTION VERSION ARCH [--dry-run] [-v]
    retrace-server-reposync --all            (every release in SyncReleases)
    retrace-server-reposync --discover DISTRIBUTION [--arch ARCH]

Exit status: 0 done; 1 another sync of the release is running; 2 usage or
configuration error (as for every command); 3 some repository had no
working mirror (what was fetched is in place and the metadata covers it);
4 createrepo_c failed; 5 packages were refused (signatures).  With --all the
highest status of all releases is returned.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import add_version_argument, service
from retrace_server.errors import ConfigError
from retrace_server.packaging.release import ReleaseId
from retrace_server.privileges import add_service_arguments
from retrace_server.reports.buckets import DB_NAME as BUCKETS_DB
from retrace_server.reports.triage import resymbolize
from retrace_server.reposync.plugins import PluginError, load_plugins
from retrace_server.reposync.repository import EXIT_USAGE, SyncError, discover_versions, parse_release, sync_release

if TYPE_CHECKING:
    from collections.abc import Sequence

    from retrace_server.config import Config

PROG = "retrace-server-reposync"


class Output:
    """Steps always, single packages with -v; both on stdout for cron's mail or log."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def step(self, message: str) -> None:
        print(message, flush=True)

    def item(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Mirror a release's packages and debuginfo into RepoDir.")
    add_version_argument(parser)
    parser.add_argument("release", nargs="*", metavar="DISTRIBUTION VERSION ARCH")
    parser.add_argument("--all", action="store_true", help="sync every release listed in SyncReleases")
    parser.add_argument("--discover", metavar="DISTRIBUTION", help="list the versions the distribution's mirror offers")
    parser.add_argument("--arch", default="x86_64", help="architecture for --discover (default x86_64)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be fetched; change nothing")
    parser.add_argument("--metadata-only", action="store_true",
                        help="sync the release's metadata only (apt: the signed indexes; rpm-md: each "
                             "repository's repomd.xml, primary and filelists); workers download the packages a crash "
                             "needs from the mirror")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every package fetched")
    add_service_arguments(parser)
    return parser


def releases_to_sync(args: argparse.Namespace, config: Config) -> list[ReleaseId]:
    if args.all:
        # Nothing listed is a quiet no-op: the shipped cron file runs --all before an admin has chosen releases.
        parsed = [ReleaseId.parse(text) for text in config.sync_releases]
        releases = [release for release in parsed if release is not None]
        if len(releases) != len(parsed):
            raise SyncError(
                f"SyncReleases must list release ids such as fedora-41-x86_64 (it is {config.SyncReleases!r})",
                EXIT_USAGE,
            )
        return releases
    if len(args.release) != 3:
        raise SyncError("give DISTRIBUTION VERSION ARCH (e.g. fedora 41 x86_64), --all or --discover", EXIT_USAGE)
    return [parse_release(*args.release)]


@service.command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Output(args.verbose)
    try:
        config, path = service.load(args)
        plugins = load_plugins(config.PluginDir, path)
        if args.discover:
            for version in discover_versions(plugins, args.discover.lower(), args.arch):
                print(version)
            return 0
        worst = 0
        for release in releases_to_sync(args, config):
            try:
                summary = sync_release(config, plugins, release, output, args.dry_run, metadata_only=args.metadata_only)
            except SyncError as err:
                print(f"{PROG}: {release}: {err}", file=sys.stderr)
                worst = max(worst, err.exit_code)
                continue
            output.step(summary.line())
            worst = max(worst, summary.exit_code)
            if not args.dry_run and (Path(config.SaveDir) / BUCKETS_DB).exists():
                tried, moved = resymbolize(config, str(release))
                if tried:
                    output.step(f"{release}: {tried} reports symbolized in part tried again, {moved} moved")
        return worst
    except (ConfigError, PluginError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except SyncError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code
