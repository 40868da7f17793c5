"""retrace-server-httpd: run the real Apache + mod_wsgi around httpd/retrace.conf.

Builds a minimal, self-contained Apache configuration that includes the
same ``retrace.conf`` an admin drops into conf.d, makes a self-signed
certificate when none is given, and runs Apache in the foreground until
SIGTERM.  It refuses to start, with a sentence saying why, when the config
is invalid, the port is taken or the service user cannot read what the
daemon processes need (the ``/root`` is 0700 trap).
"""
from __future__ import annotations

import argparse
import errno
import grp
import logging
import os
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrace_server import add_version_argument, service, wsgi
from retrace_server.config import Config, load_config
from retrace_server.config import config_path as configured_path
from retrace_server.environments.sandbox import sandbox_argv
from retrace_server.errors import ConfigError
from retrace_server.packaging.release import served_releases
from retrace_server.wsgi.debuginfod_server import READY_TIMEOUT, wait_until_connectable
from retrace_server.wsgi.debuginfod_server import state_dir as debuginfod_state_dir

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import FrameType

    from retrace_server.paths import StrPath

PROG = "retrace-server-httpd"
_APACHE_BINARIES = ("apache2", "httpd")
_MODULE_DIRS = ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules")
_WSGI_MODULES = ("mod_wsgi.so", "mod_wsgi_python3.so")
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

_ACCESS_CHECK = """
import os, sys
for spec in sys.argv[1:]:
    mode, path = spec.split(":", 1)
    need = os.R_OK | (os.W_OK if "w" in mode else 0) | (os.X_OK if os.path.isdir(path) else 0)
    if not os.access(path, need):
        print(("write to " if "w" in mode else "read ") + path)
"""


class LaunchError(Exception):
    """Why the server cannot start; printed as one sentence, exit code 2."""


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"--listen must look like HOST:PORT (e.g. 127.0.0.1:8443), not {text!r}")
    return host.strip("[]"), int(port)


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise LaunchError(f"port {port} on {host} is already in use; choose another with --listen") from None
            raise LaunchError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def find_apache() -> str:
    for name in _APACHE_BINARIES:
        found = shutil.which(name, path=_SYSTEM_PATH)
        if found:
            return found
    raise LaunchError("Apache httpd is not installed (no apache2 or httpd); run `make run` to install it")


def find_module_dir() -> tuple[Path, str]:
    for directory in _MODULE_DIRS:
        for wsgi_module in _WSGI_MODULES:
            if Path(directory, wsgi_module).is_file():
                return Path(directory), wsgi_module
    raise LaunchError("mod_wsgi for Python 3 is not installed (libapache2-mod-wsgi-py3 or python3-mod_wsgi)")


def default_retrace_conf() -> Path:
    """httpd/retrace.conf: installed under <prefix>/share, or in the checkout."""
    for candidate in (Path(sys.prefix, "share", "retrace-server", "retrace.conf"),
                      Path(__file__).resolve().parent.parent / "httpd" / "retrace.conf"):
        if candidate.is_file():
            return candidate
    raise LaunchError("cannot find httpd/retrace.conf; pass it with --httpd-conf")


def error_log(config: Config) -> str:
    """Apache's ErrorLog: a file in LogDir, or (LogTo = syslog) util-linux's logger on SyslogSocket, which
    Apache's own syslog support (always /dev/log) cannot be pointed at."""
    if config.LogTo == "file":
        return f'ErrorLog "{apache_log_dir(config)}/httpd_error.log"'
    logger = shutil.which("logger", path=_SYSTEM_PATH)
    if logger is None:
        raise LaunchError("LogTo = syslog needs util-linux's logger for Apache's error log, and it is not installed")
    if not re.fullmatch(r"/[\w./+-]+", str(config.SyslogSocket)):
        raise LaunchError(f"SyslogSocket must be an absolute path without spaces or quotes, not {config.SyslogSocket}")
    return f'ErrorLog "||{logger} --socket {config.SyslogSocket} --tag retrace-server-httpd --priority daemon.notice"'


def make_certificate(run_dir: Path, host: str) -> tuple[Path, Path]:
    cert, key = run_dir / "server.crt", run_dir / "server.key"
    alt_name = f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"
    argv = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "365", "-subj", f"/CN={host}", "-addext", f"subjectAltName={alt_name},DNS:localhost",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-keyout", str(key), "-out", str(cert),
    ]
    try:
        subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise LaunchError("openssl is not installed; install it or pass --cert and --key") from None
    except subprocess.CalledProcessError as err:
        raise LaunchError(f"openssl could not make a certificate: {err.stderr.decode(errors='replace').strip()}") from None
    return cert, key


def apache_log_dir(config: Config) -> Path:
    """Where Apache writes its logs: ``LogDir/httpd``, owned by root.

    Apache opens its logs as root; inside a directory the service user owns,
    a symlink planted there would make root append to any file.
    """
    return config.LogDir / "httpd"


def prepare_directories(config: Config, user: pwd.struct_passwd) -> None:
    """Create missing spool and log directories for the service user, and Apache's own log directory (as root)."""
    if os.geteuid() != 0:
        apache_log_dir(config).mkdir(parents=True, exist_ok=True)
        return
    for directory, mode in ((config.SaveDir, 0o770), (config.LogDir, 0o750), (config.CacheDir, 0o750),
                            (config.RepoDir, 0o755)):
        if not directory.exists():
            directory.mkdir(mode=mode, parents=True)
            os.chown(directory, user.pw_uid, user.pw_gid)
    root_owned_directory(apache_log_dir(config))


def root_owned_directory(path: Path) -> None:
    """Make ``path`` a real directory owned by root and writable by root alone, or LaunchError.

    Its parent belongs to the service user, who could have put a symlink or
    a directory of their own there before us.
    """
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise LaunchError(f"{path} must be a directory for Apache's logs, but it is a symlink or a file; remove it")
    if info.st_uid != 0 or info.st_mode & 0o022:
        os.chown(path, 0, 0, follow_symlinks=False)
        os.chmod(path, 0o755)
        for entry in os.scandir(path):
            if entry.is_symlink():
                os.unlink(entry.path)


def check_service_user_access(user: pwd.struct_passwd, paths: Iterable[tuple[str, StrPath]]) -> None:
    """LaunchError listing what ``user`` cannot read or write among ``paths``.

    ``paths`` are ``(mode, path)`` with mode "r" or "w".  Checked in a child
    that has become the user, since only the kernel knows the answer.
    """
    if os.geteuid() != 0:
        return
    specs = [f"{mode}:{path}" for mode, path in paths]
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", _ACCESS_CHECK, *specs],
        user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, cwd="/",
    )
    problems = [line for line in result.stdout.splitlines() if line] or (
        [result.stderr.strip()] if result.returncode else []
    )
    if problems:
        raise LaunchError(
            f"the service user {user.pw_name} cannot " + "; cannot ".join(problems)
            + " (a checkout or venv under a private home directory is a common cause; "
            "install with VENV=/opt/retrace-server/venv or fix the permissions)"
        )


def worker_executable() -> Path:
    """The retrace-server-worker installed next to this Python (the venv's)."""
    return Path(sys.executable).with_name("retrace-server-worker")


def as_user(user: pwd.struct_passwd) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user`` (a pwd entry); none when the launcher is not root."""
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if os.geteuid() == 0 else {}


def check_gdb_sandbox(user: pwd.struct_passwd) -> None:
    """LaunchError unless the service user can start the sandbox gdb runs in.

    Without unprivileged user namespaces every retrace would fail; saying so
    at start-up beats a server that accepts crashes it cannot retrace.
    """
    if shutil.which("bwrap") is None or shutil.which("gdb") is None:
        raise LaunchError("bubblewrap (bwrap) and gdb must be installed; `make run` installs them")
    result = subprocess.run(sandbox_argv(["true"], []), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            cwd="/", **as_user(user))
    if result.returncode != 0:
        raise LaunchError(
            f"the gdb sandbox (bubblewrap) cannot start as {user.pw_name}: {result.stderr.strip()} "
            "(unprivileged user namespaces must be enabled: sysctl user.max_user_namespaces > 0)"
        )


# Apache's LimitRequestBody cannot exceed 2 GiB; above it, 0 (no Apache limit) leaves
# the check to the application, which counts every byte it streams.
_APACHE_BODY_MAXIMUM = 2147483647


def apache_body_limit(config: Config) -> int:
    largest = config.largest_upload_bytes
    return largest if largest <= _APACHE_BODY_MAXIMUM else 0


def debuginfod_socket(run_dir: Path) -> Path:
    """The Unix socket the launcher's debuginfod listens on, in a directory the service user owns."""
    return run_dir / "debuginfod" / "debuginfod.sock"


def apache_config(*, run_dir: Path, host: str, port: int, user: str, group: str, config: Config, config_path: Path,
                  retrace_conf: Path, cert: Path, key: Path, module_dir: Path, wsgi_module: str) -> str:
    listen_host = f"[{host}]" if ":" in host else host
    defines = {
        "RETRACE_WSGI_SCRIPT": Path(wsgi.__file__).resolve().parent / "retrace.wsgi",
        "RETRACE_PYTHON_PATH": sysconfig.get_paths()["purelib"],
        "RETRACE_CONFIG": config_path,
        "RETRACE_USER": user,
        "RETRACE_GROUP": group,
        "RETRACE_MAX_BODY": config.max_packed_bytes,
        "RETRACE_MAX_VMCORE_BODY": config.vmcore_upload_cap_bytes,
        "RETRACE_LIMIT_REQUEST_BODY": apache_body_limit(config),
        "RETRACE_UPLOAD_SECONDS": config.MaxUploadSeconds,
        # mod_reqtimeout needs a rate: 500 B/s (its own example) stands for "no floor".
        "RETRACE_MIN_UPLOAD_RATE": config.min_upload_rate_bytes or 500,
    }
    if config.RequireHTTPS:
        defines["RETRACE_REQUIRE_HTTPS"] = 1
    if config.DebuginfodServe:
        defines["RETRACE_DEBUGINFOD_SOCKET"] = debuginfod_socket(run_dir)
    if config.AllowTaskManager and config.ManagerUserFile:
        defines["RETRACE_MANAGER_USER_FILE"] = config.ManagerUserFile
    modules = [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("authn_core_module", "mod_authn_core.so"),
        ("authn_file_module", "mod_authn_file.so"),
        ("auth_basic_module", "mod_auth_basic.so"),
        ("authz_user_module", "mod_authz_user.so"),
        ("env_module", "mod_env.so"),
        ("headers_module", "mod_headers.so"),
        ("rewrite_module", "mod_rewrite.so"),
        ("reqtimeout_module", "mod_reqtimeout.so"),
        ("socache_shmcb_module", "mod_socache_shmcb.so"),
        ("ssl_module", "mod_ssl.so"),
        ("wsgi_module", wsgi_module),
    ]
    if config.DebuginfodServe:
        modules += [("proxy_module", "mod_proxy.so"), ("proxy_http_module", "mod_proxy_http.so"),
                    ("deflate_module", "mod_deflate.so")]
    lines = [f'ServerRoot "{run_dir}"', f"ServerName {listen_host}:{port}", f"Listen {listen_host}:{port}"]
    lines += [f'LoadModule {name} "{module_dir / so}"' for name, so in modules]
    lines += [
        f'PidFile "{run_dir}/httpd.pid"',
        f'DefaultRuntimeDir "{run_dir}"',
        f"Mutex file:{run_dir} default",
        f"User {user}",
        f"Group {group}",
        error_log(config),
        "LogLevel warn",
        'LogFormat "%h %t \\"%r\\" %>s %b %D" retrace',
        f'CustomLog "{apache_log_dir(config)}/httpd_access.log" retrace',
        "SSLEngine on",
        "SSLProtocol -all +TLSv1.2 +TLSv1.3",
        # TLS 1.2: forward-secret AEAD suites only (TLS 1.3's are all of that kind).
        "SSLCipherSuite ECDHE+AESGCM:ECDHE+CHACHA20",
        "SSLHonorCipherOrder off",
        "SSLSessionTickets off",
        f'SSLCertificateFile "{cert}"',
        f'SSLCertificateKeyFile "{key}"',
        f'SSLSessionCache "shmcb:{run_dir}/ssl_scache(512000)"',
        f'WSGISocketPrefix "{run_dir}/wsgi"',
    ]
    lines += [f'Define {name} "{value}"' for name, value in defines.items()]
    lines.append(f'Include "{retrace_conf}"')
    return "\n".join(lines) + "\n"


def _error_log_tail(config: Config, lines: int = 15) -> str:
    try:
        text = (apache_log_dir(config) / "httpd_error.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def serve(args: argparse.Namespace) -> int:
    config_path = configured_path(os.environ, args.config).resolve()
    try:
        config = load_config(config_path)
    except ConfigError as err:
        raise LaunchError(f"invalid configuration: {err}") from None
    host, port = parse_listen(args.listen)
    try:
        user = pwd.getpwnam(args.user)
    except KeyError:
        raise LaunchError(f"the service user {args.user} does not exist; `make run` creates it") from None
    group = grp.getgrgid(user.pw_gid).gr_name
    apache = find_apache()
    module_dir, wsgi_module = find_module_dir()
    retrace_conf = Path(args.httpd_conf).resolve() if args.httpd_conf else default_retrace_conf()
    check_port_free(host, port)
    prepare_directories(config, user)
    wsgi_script = Path(wsgi.__file__).resolve().parent / "retrace.wsgi"
    check_service_user_access(user, [
        ("r", wsgi_script), ("r", sysconfig.get_paths()["purelib"]), ("r", config_path),
        ("w", config.SaveDir), ("w", config.LogDir), ("w", config.CacheDir), ("r", config.RepoDir),
        ("r", worker_executable()),
    ])
    check_gdb_sandbox(user)
    run_dir = Path(tempfile.mkdtemp(prefix="retrace-httpd-"))
    try:
        os.chmod(run_dir, 0o755)
        if args.cert:
            cert, key = Path(args.cert).resolve(), Path(args.key).resolve()
        else:
            cert, key = make_certificate(run_dir, host)
        conf_file = run_dir / "httpd.conf"
        conf_file.write_text(apache_config(
            run_dir=run_dir, host=host, port=port, user=user.pw_name, group=group, config=config,
            config_path=config_path, retrace_conf=retrace_conf, cert=cert, key=key,
            module_dir=module_dir, wsgi_module=wsgi_module,
        ))
        test = subprocess.run([apache, "-t", "-f", str(conf_file)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if test.returncode != 0:
            raise LaunchError(f"Apache rejects the generated configuration: {test.stderr.strip()}")
        helpers: list[subprocess.Popen[Any]] = [start_dispatcher(config, config_path, user)]
        try:
            if config.DebuginfodServe:
                helpers.append(start_debuginfod(config, config_path, debuginfod_socket(run_dir), args.debuginfod_user))
            return run_apache(apache, conf_file, host, port, config, cert)
        finally:
            for helper in reversed(helpers):
                helper.terminate()
                helper.wait()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def start_dispatcher(config: Config, config_path: Path, user: pwd.struct_passwd) -> subprocess.Popen[str]:
    """retrace-server-dispatcher as the service user; LaunchError unless it says it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "retrace_server.worker.dispatcher", "--config", str(config_path), "--user", user.pw_name,
         "--log", str(config.LogDir / "dispatcher.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd="/",
        env={"PATH": _SYSTEM_PATH, "LANG": "C.UTF-8"}, **as_user(user),
    )
    assert process.stdout is not None  # PIPE
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
    line = process.stdout.readline() if ready else ""
    process.stdout.close()
    if "listening" not in line:
        process.kill()
        process.wait()
        raise LaunchError("the dispatcher did not start; see LogDir/dispatcher.log")
    return process


def start_debuginfod(config: Config, config_path: Path, socket_path: Path,
                     user_name: str) -> subprocess.Popen[bytes]:
    """retrace-server-debuginfod under a user of its own; LaunchError unless its socket answers.

    debuginfod answers anyone through ``/buildid/``: it runs as
    ``user_name`` (not the service user, who owns the tasks), in namespaces
    that show it RepoDir read-only and its own directory
    (``CacheDir/debuginfod``, where its log is too).  Without root the
    launcher cannot switch users and runs it as itself.
    """
    if shutil.which("debuginfod") is None or shutil.which("socat") is None:
        raise LaunchError("DebuginfodServe = 1 needs debuginfod and socat "
                          "(Debian: debuginfod socat, Fedora: elfutils-debuginfod socat)")
    own_dir = debuginfod_state_dir(config)
    own_dir.mkdir(parents=True, exist_ok=True)
    socket_path.parent.mkdir(exist_ok=True)
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(user_name)
        except KeyError:
            raise LaunchError(f"the debuginfod user {user_name} does not exist; `make run` creates it "
                              "(or give another with --debuginfod-user)") from None
        for path in (own_dir, socket_path.parent):
            own_tree(path, user.pw_uid, user.pw_gid)
        # Its directory lies in CacheDir, which only the service user may list: let it pass through.
        os.chmod(config.CacheDir, os.stat(config.CacheDir).st_mode | stat.S_IXOTH)
    process = subprocess.Popen(
        [sys.executable, "-m", "retrace_server.wsgi.debuginfod_server", "--config", str(config_path),
         "--socket", str(socket_path), "--log", str(own_dir / "debuginfod.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
        **(as_user(user) if user is not None else {}),
    )
    if not wait_until_connectable(str(socket_path), process, socket.AF_UNIX):
        process.kill()
        raise LaunchError("debuginfod did not start (DebuginfodServe = 1); see CacheDir/debuginfod/debuginfod.log")
    return process


def own_tree(path: StrPath, uid: int, gid: int) -> None:
    """Give ``path`` and everything below it to ``uid``:``gid`` (a directory an older version made as another user)."""
    for directory, dirs, files in os.walk(path):
        for name in (directory, *(os.path.join(directory, entry) for entry in dirs + files)):
            os.chown(name, uid, gid, follow_symlinks=False)


def run_apache(apache: str, conf_file: Path, host: str, port: int, config: Config, cert: Path) -> int:
    process = subprocess.Popen([apache, "-f", str(conf_file), "-DFOREGROUND"], stdin=subprocess.DEVNULL)
    stopping = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    if not wait_until_connectable((host, port), process):
        stop(signal.SIGTERM, None)
        process.wait()
        raise LaunchError(f"Apache did not start; its error log says:\n{_error_log_tail(config)}")
    print(f"{PROG}: serving https://{host}:{port}/ (certificate {cert}); stop with Ctrl-C or SIGTERM", flush=True)
    releases = served_releases(config)
    if releases:
        print(f"{PROG}: releases served: {' '.join(map(str, releases))}", flush=True)
    else:
        print(f"{PROG}: no release is served yet (no <dist>-<ver>-<arch>/repodata/ in {config.RepoDir}): "
              "every crash will be refused as unsupported until `retrace-server-reposync DISTRIBUTION VERSION "
              "ARCH` fills one (README, 'Repositories')", flush=True)
    returncode = process.wait()
    if stopping:
        print(f"{PROG}: stopped", flush=True)
        return 0
    print(f"{PROG}: Apache exited with status {returncode}; its error log says:\n{_error_log_tail(config)}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run retrace-server under Apache httpd + mod_wsgi over HTTPS.")
    add_version_argument(parser)
    parser.add_argument("--config", help="retrace-server.conf to serve (default: $RETRACE_SERVER_CONFIG_PATH or "
                                          "/etc/retrace-server/retrace-server.conf)")
    parser.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--cert", help="PEM certificate (default: a new self-signed one)")
    parser.add_argument("--key", help="PEM private key for --cert")
    parser.add_argument("--user", default="retrace", help="service user of the WSGI daemons (default %(default)s)")
    parser.add_argument("--httpd-conf", help="Apache include file (default: the installed httpd/retrace.conf)")
    parser.add_argument("--debuginfod-user", default="retrace-debuginfod",
                        help="with DebuginfodServe = 1: the user debuginfod runs as (default %(default)s)")
    return parser


@service.command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format=f"{PROG}: %(levelname)s: %(message)s")
    if bool(args.cert) != bool(args.key):
        print(f"{PROG}: --cert and --key go together", file=sys.stderr)
        return 2
    try:
        return serve(args)
    except LaunchError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
