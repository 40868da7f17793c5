"""``retrace-server-debuginfod``: elfutils debuginfod over our own mirrors.

People who will not upload a core (it holds secrets) can still use the
server's mirrors: with ``DEBUGINFOD_URLS=https://<server>/`` their local gdb
fetches executables, debuginfo and sources by build-id.  debuginfod indexes
``RepoDir`` (``-R`` RPMs, ``-U`` .deb/.ddeb) on loopback; Apache proxies
``/buildid/`` under the server's HTTPS host, compressed (debuginfod 0.188
sends files uncompressed), and ``/debuginfod/metrics`` next to ours.
``retrace-server-httpd`` runs it when ``DebuginfodServe = 1``; on a system
install, ``config/systemd/retrace-server-debuginfod.service`` runs this
command.  debuginfod 0.188 has no listen-address option and binds every
interface on ``DebuginfodPort``: firewall that port.
"""

import argparse
import os
import sys

from retrace.config import ConfigError, config_path, load_config

PROG = "retrace-server-debuginfod"
RESCAN_SECONDS = 300


def debuginfod_argv(config):
    return [
        "debuginfod", "-p", str(config.DebuginfodPort), "-d", str(config.CacheDir / "debuginfod.sqlite"),
        "-R", "-U", "-t", str(RESCAN_SECONDS), str(config.RepoDir),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Serve RepoDir's packages by build-id with debuginfod.")
    parser.add_argument("--config", help="configuration file (default: $RETRACE_SERVER_CONFIG_PATH or /etc/...)")
    args = parser.parse_args(argv)
    try:
        config = load_config(config_path(os.environ, args.config))
    except ConfigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    argv = debuginfod_argv(config)
    os.execvp(argv[0], argv)
