"""``retrace-server-debuginfod``: elfutils debuginfod over our own mirrors.

People who will not upload a core (it holds secrets) can still use the
server's mirrors: with ``DEBUGINFOD_URLS=https://<server>/`` their local gdb
fetches executables, debuginfo and sources by build-id.  debuginfod indexes
``RepoDir`` (``-R`` RPMs, ``-U`` .deb/.ddeb); Apache proxies ``/buildid/``
under the server's HTTPS host, compressed (debuginfod 0.188 sends files
uncompressed), and ``/debuginfod/metrics`` next to ours.

debuginfod 0.188 has no listen-address option: on its own it binds every
interface, and it has no authentication.  So it runs in a network namespace
of its own (bubblewrap, unprivileged), where the only interface is that
namespace's loopback, and ``socat`` relays a Unix socket (a file, which
crosses network namespaces) to it.  Nothing listens on any host interface;
Apache reaches it as ``unix:<socket>|http://localhost/``.

``retrace-server-httpd`` runs it when ``DebuginfodServe = 1``; on a system
install, ``config/systemd/retrace-server-debuginfod.service`` runs this
command.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server import add_version_argument, service
from retrace_server.environments.sandbox import host_binds
from retrace_server.privileges import CONFIG_HELP, append_stderr_to

if TYPE_CHECKING:
    from collections.abc import Sequence

    from retrace_server.config import Config

PROG = "retrace-server-debuginfod"
RESCAN_SECONDS = 300
DEFAULT_SOCKET = "/run/retrace-server/debuginfod.sock"
READY_TIMEOUT = 30


def state_dir(config: Config) -> Path:
    """debuginfod's own directory (its database, and ``tmp/`` for extracted files): the only place it writes."""
    return config.CacheDir / "debuginfod"


def scratch_dir(config: Config) -> Path:
    """debuginfod's TMPDIR (its extracted-file cache): on the cache volume, not a tmpfs in memory."""
    return state_dir(config) / "tmp"


def debuginfod_argv(config: Config) -> list[str]:
    return [
        "debuginfod", "-p", str(config.DebuginfodPort), "-d", str(state_dir(config) / "index.sqlite"),
        "-R", "-U", "-t", str(RESCAN_SECONDS), str(config.RepoDir),
    ]


def relay_argv(socket_path: Path, port: int) -> list[str]:
    """socat: every connection to the Unix socket becomes one to debuginfod's port in the namespace.

    Mode 0666 because Apache's children (www-data or apache on a system
    install) connect to it; the socket is as reachable as a loopback port
    was, by local processes only.
    """
    return ["socat", f"UNIX-LISTEN:{socket_path},fork,unlink-early,mode=0666", f"TCP:127.0.0.1:{port}"]


def namespace_argv(config: Config, config_file: Path, socket_path: Path) -> list[str]:
    """bwrap: a private network and pid namespace that sees only what debuginfod serves.

    It is reachable from outside (``/buildid/``), so it sees the system's
    programs, this Python, the configuration, ``RepoDir`` read-only, and
    writes only its own directory and the socket's: never ``SaveDir``
    (task passwords, cores) nor the rest of ``CacheDir``.  The pid namespace
    makes the teardown whole: when bwrap dies (SIGTERM from the launcher or
    systemd), its init dies with it and the kernel kills debuginfod and
    socat too.
    """
    # The private /tmp first: binds below it (a venv or a config under /tmp) must stay visible on top of it.
    argv = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            *host_binds(), "--ro-bind", "/etc", "/etc", "--ro-bind", sys.prefix, sys.prefix,
            "--ro-bind", str(config_file), str(config_file), "--ro-bind", str(config.RepoDir), str(config.RepoDir)]
    for path in (state_dir(config), Path(socket_path).parent):
        argv += ["--bind", str(path), str(path)]
    return argv + ["--", sys.executable, "-m", "retrace_server.wsgi.debuginfod_server", "--config", str(config_file),
                   "--socket", str(socket_path), "--in-namespace"]


def wait_until_connectable(address: str | tuple[str, int], process: subprocess.Popen[bytes],
                           family: socket.AddressFamily = socket.AF_INET, timeout: float = READY_TIMEOUT) -> bool:
    """True once ``address`` accepts a connection; False if ``process`` ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                probe.connect(address)
                return True
        except OSError:
            time.sleep(0.05)
    return False


def serve_in_namespace(config: Config, socket_path: Path) -> int:
    """Run debuginfod and, once it listens, the relay; end both when either ends."""
    environment = {**os.environ, "TMPDIR": str(scratch_dir(config))}
    debuginfod = subprocess.Popen(debuginfod_argv(config), stdin=subprocess.DEVNULL, env=environment, cwd="/")
    if not wait_until_connectable(("127.0.0.1", config.DebuginfodPort), debuginfod):
        print(f"{PROG}: debuginfod did not listen on port {config.DebuginfodPort} in its namespace",
              file=sys.stderr)
        debuginfod.kill()
        return 1
    relay = subprocess.Popen(relay_argv(socket_path, config.DebuginfodPort), stdin=subprocess.DEVNULL)
    ended, status = os.wait()
    for process in (debuginfod, relay):
        if process.pid != ended:
            process.terminate()
            process.wait()
    print(f"{PROG}: {'debuginfod' if ended == debuginfod.pid else 'socat'} ended (status {status})",
          file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve RepoDir's packages by build-id with debuginfod.")
    add_version_argument(parser)
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help=f"the Unix socket Apache proxies /buildid/ to (default: {DEFAULT_SOCKET})")
    parser.add_argument("--log", help="append errors to this file (opened as the user this runs as, "
                                      "never through a symlink)")
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    return parser


@service.command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log:
        append_stderr_to(args.log)
    config, config_file = service.load(args, switch_user=False)
    socket_path = Path(args.socket).absolute()
    if args.in_namespace:
        return serve_in_namespace(config, socket_path)
    for directory in (state_dir(config), scratch_dir(config), socket_path.parent):
        directory.mkdir(parents=True, exist_ok=True)
    argv = namespace_argv(config, Path(config_file).absolute(), socket_path)
    os.execvp(argv[0], argv)
    return None


if __name__ == "__main__":
    sys.exit(main())
