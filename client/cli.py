"""``retrace-client OPERATION [options]``: abrt-retrace-client's operations and messages.

Exit status: 0 success, 1 the retrace failed (its log is printed), 2 usage
or local input error, 3 the server refused (its sentence is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, BinaryIO

from retrace_server import __version__, add_version_argument
from retrace_server.client import unwind
from retrace_server.client.crash import (
    CrashInputError,
    from_apport,
    from_core,
    from_coredumpctl,
    from_problem_dir,
    from_vmcore,
)
from retrace_server.client.progress import MIB, ProgressFile, Reporter, human_size
from retrace_server.client.server import XZ_TAR, ZSTD_TAR, RetraceServer, ServerRefused

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    import requests

    from retrace_server.client.crash import Crash
    from retrace_server.client.server import Settings, Status

PROG = "retrace-client"
EXIT_OK, EXIT_FAILED, EXIT_LOCAL, EXIT_REFUSED = 0, 1, 2, 3
ASK_ABOVE_BYTES = 8 * MIB
EXPLOITABLE_SAVE_RATING = 4
TASK_OPERATIONS = ("status", "backtrace", "log", "exploitable")


class LocalError(Exception):
    """A usage or local input problem; exit status 2."""


def _seconds(text: str) -> float:
    """A delay given on the command line or in the environment (ABRT's own variable)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, not {text}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Get a symbolized backtrace of a crash from a retrace server.")
    add_version_argument(parser)
    parser.add_argument("operation", choices=("batch", "create", "report", "settings", *TASK_OPERATIONS))
    parser.add_argument("--uri", default=os.environ.get("RETRACE_SERVER_URI"),
                        help="server, e.g. https://retrace.example.org (env RETRACE_SERVER_URI)")
    parser.add_argument("-k", "--insecure", action="store_true",
                        default=os.environ.get("RETRACE_SERVER_INSECURE") == "insecure",
                        help="do not verify the server's TLS certificate")
    parser.add_argument("--cafile", help="CA certificate(s) to verify the server with")
    parser.add_argument("-d", "--dir", help="ABRT problem directory (coredump, executable, package, os_release...)")
    parser.add_argument("-c", "--core", help="a core file (with --executable)")
    parser.add_argument("--executable", help="absolute path of the program that crashed (with --core)")
    parser.add_argument("--coredumpctl", metavar="MATCH", help="the newest crash systemd-coredump kept matching MATCH")
    parser.add_argument("--vmcore", metavar="FILE", help="a kernel dump (ELF, kdump-compressed or flattened)")
    parser.add_argument("--apport", metavar="FILE.crash", help="an Ubuntu apport report (/var/crash/*.crash)")
    parser.add_argument("--package", help="name-version-release of the crashed package (default: rpm -qf)")
    parser.add_argument("--os-release", help="release line, e.g. 'Fedora release 41 (Forty One)' (default: this system)")
    parser.add_argument("-l", "--status-delay", type=_seconds, default=None,
                        help="seconds between status queries (default: $ABRT_STATUS_DELAY or 10)")
    parser.add_argument("--no-pkgcheck", action="store_true", help="do not ask the server whether it knows the package")
    parser.add_argument("--headers", action="store_true", help="print response headers to stderr")
    parser.add_argument("-t", "--task", help="task id (status, backtrace, log, exploitable)")
    parser.add_argument("-p", "--password", help="task password (status, backtrace, log, exploitable)")
    parser.add_argument("-y", "--yes", action="store_true", help="upload large crashes without asking")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every status answer")
    parser.add_argument("--no-core", action="store_true",
                        help="report: never upload the core, even when the server asks for it")
    return parser


def load_crash(args: argparse.Namespace) -> Crash:
    forms = [form for form in (args.dir, args.core, args.coredumpctl, args.vmcore, args.apport) if form]
    if len(forms) != 1:
        raise LocalError("give the crash as exactly one of --dir DIR, --core FILE --executable PATH, "
                         "--coredumpctl MATCH, --vmcore FILE, --apport FILE.crash")
    if args.apport:
        return from_apport(args.apport)
    if args.vmcore:
        return from_vmcore(args.vmcore)
    if args.dir:
        return from_problem_dir(args.dir)
    if args.core:
        if not args.executable:
            raise LocalError("--core needs --executable PATH (the program that crashed)")
        return from_core(args.core, args.executable, args.package, args.os_release)
    return from_coredumpctl(args.coredumpctl, args.package, args.os_release)


# Content type -> compressor.  xz -2 as ABRT did; vmcores (hundreds of MB to GBs)
# go with zstd where the server takes it: as small, many times faster.
_COMPRESSORS = {XZ_TAR: ["xz", "-2", "-"], ZSTD_TAR: ["zstd", "-3", "-q", "-c", "-"]}


def archive_type(crash: Crash, settings: Settings) -> str:
    wants_zstd = crash.task_type == 2 and ZSTD_TAR in settings.supported_formats
    return ZSTD_TAR if wants_zstd and shutil.which("zstd") else XZ_TAR


@contextlib.contextmanager
def crash_archive(crash: Crash, content_type: str = XZ_TAR) -> Iterator[tuple[BinaryIO, int]]:
    """``tar cO --directory=D names | xz -2`` (or zstd) into an unnamed file in /var/tmp, as ABRT did."""
    with tempfile.TemporaryFile(dir="/var/tmp", prefix="retrace-client-archive-") as archive:
        # A problem directory goes as it is (a symlink in it is the server's to refuse).  The dump goes last:
        # the release and package files before it let the server unpack the core's packages while it uploads.
        names = sorted(crash.files, key=lambda name: name in ("coredump", "vmcore"))
        tar = subprocess.Popen(["tar", "chO" if crash.follow_symlinks else "cO", f"--directory={crash.directory}",
                                "--", *names], stdout=subprocess.PIPE)
        assert tar.stdout is not None  # stdout=PIPE
        if shutil.which(_COMPRESSORS[content_type][0]):
            compressed = subprocess.run(_COMPRESSORS[content_type], stdin=tar.stdout, stdout=archive).returncode == 0
        else:  # a minimal system without xz: the same stream from Python's lzma
            compressor = lzma.LZMACompressor(preset=2)
            while chunk := tar.stdout.read(1 << 20):
                archive.write(compressor.compress(chunk))
            archive.write(compressor.flush())
            compressed = True
        tar.stdout.close()
        if tar.wait() != 0 or not compressed:
            raise LocalError(f"cannot create the archive to upload (tar or {_COMPRESSORS[content_type][0]} failed)")
        size = archive.tell()
        archive.seek(0)
        yield archive, size


def confirm_large_upload(size: int, args: argparse.Namespace) -> None:
    if size <= ASK_ABOVE_BYTES or args.yes or not sys.stdin.isatty():
        return
    answer = input(f"You are going to upload {human_size(size)}. Continue? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise LocalError("upload cancelled")


def check_settings(settings: Settings, crash: Crash) -> None:
    """Refuse locally, with upstream's sentences, what the server would refuse."""
    if settings.fully_occupied:
        raise ServerRefused("The server is fully occupied. Try again later.")
    limit = settings.max_unpacked_size * MIB
    if crash.task_type == 0 and limit and crash.unpacked_size > limit:
        raise ServerRefused(
            "Retrace server can not be used, because the crash is too large. Try local retracing. "
            f"The size of your crash is {human_size(crash.unpacked_size)}, but the retrace server only accepts "
            f"crashes smaller or equal to {human_size(limit)}."
        )
    if XZ_TAR not in settings.supported_formats:
        raise ServerRefused("The server does not support xz-compressed tarballs.")
    if crash.release and crash.release not in settings.supported_releases:
        raise ServerRefused(
            f"The release '{crash.release}' is not supported by the Retrace server "
            f"(it supports: {', '.join(settings.supported_releases) or 'none'})."
        )


def submit(server: RetraceServer, crash: Crash, args: argparse.Namespace, reporter: Reporter) -> tuple[str, str]:
    reporter.say("Querying server settings")
    settings = server.settings()
    check_settings(settings, crash)
    package, arch, release = crash.package, crash.arch, crash.release
    if not args.no_pkgcheck and package and arch and release and not server.package_known(package, arch, release):
        raise ServerRefused(
            f"Retrace server is unable to process package '{crash.package}.{crash.arch}'. "
            f"Is it a part of official '{crash.release}' repositories?"
        )
    reporter.say("Preparing an archive to upload")
    content_type = archive_type(crash, settings)
    with crash_archive(crash, content_type) as (archive, size):
        if crash.task_type == 0 and settings.max_packed_size and size > settings.max_packed_size * MIB:
            raise ServerRefused(
                f"The size of your archive is {human_size(size)}, but the retrace server only accepts archives "
                f"up to {human_size(settings.max_packed_size * MIB)}."
            )
        confirm_large_upload(size, args)
        reporter.say(f"Uploading {human_size(size)}")
        task = server.create(ProgressFile(archive, size, reporter), crash.task_type, content_type)
    reporter.say("Upload successful")
    return task


# How long a status poll asks the server to hold its answer until the task's stage changes (a long poll).
LONG_POLL_SECONDS = 30


def wait_until_finished(server: RetraceServer, task_id: str, password: str, delay: float, reporter: Reporter,
                        verbose: bool = False) -> Status:
    """Poll as ABRT did, showing the sentence when it changes, but as a long poll: each query asks the server
    to answer when the stage changes (X-Wait); after a query the server did not hold (upstream's, or one whose
    waiting slots are taken) the next comes after ``delay``, as ABRT slept between queries."""
    previous = None
    started = time.monotonic()
    waited = True  # the first query goes at once: a server that holds it answers when the stage changes
    while True:
        if not waited:
            time.sleep(delay)
        status = server.status(task_id, password, LONG_POLL_SECONDS)
        waited = status.waited
        reporter.status(status.sentence, verbose or status.sentence != previous, time.monotonic() - started)
        previous = status.sentence
        if status.finished:
            reporter.done()
            return status


def exploitable_rating(text: str | None) -> int | None:
    try:
        return int(text.rsplit(":", 1)[1]) if text is not None else None
    except (IndexError, ValueError):
        return None


def upload_crash(server: RetraceServer, args: argparse.Namespace, reporter: Reporter) -> tuple[str, str]:
    """Load the crash named on the command line and create a task from it: ``(id, password)``."""
    crash = load_crash(args)
    try:
        return submit(server, crash, args, reporter)
    finally:
        crash.discard()


def batch(server: RetraceServer, args: argparse.Namespace, reporter: Reporter) -> int:
    return follow(server, args, reporter, *upload_crash(server, args, reporter))


def follow(server: RetraceServer, args: argparse.Namespace, reporter: Reporter, task_id: str, password: str) -> int:
    """Wait for the task, then print (or save into the problem directory) its backtrace."""
    reporter.say(f"Retrace job #{task_id} started")
    status = wait_until_finished(server, task_id, password, args.status_delay, reporter, args.verbose)
    result: dict[str, Any] = {"task_id": task_id, "password": password, "status": status.state,
                              "sentence": status.sentence}
    if status.state != "FINISHED_SUCCESS":
        reporter.say("Retrace failed. Try again later and if the problem persists report this issue please.")
        result["log"] = server.result(task_id, password, "log") or ""
        emit(args, result, result["log"])
        return EXIT_FAILED
    result["backtrace"] = server.result(task_id, password, "backtrace") or ""
    exploitable = server.result(task_id, password, "exploitable")
    result["exploitable"] = exploitable
    rating = exploitable_rating(exploitable)
    if rating is not None:
        reporter.say(f"Exploitable rating (0-8 scale): {rating}")
    if args.dir:
        save(args.dir, "backtrace", result["backtrace"], reporter)
        if exploitable is not None and rating is not None and rating >= EXPLOITABLE_SAVE_RATING:
            save(args.dir, "exploitable", exploitable, reporter)
        emit(args, result, None)
    else:
        emit(args, result, result["backtrace"])
    return EXIT_OK


def report(server: RetraceServer, args: argparse.Namespace, reporter: Reporter) -> int:
    """A coreless report first; the core only when the server wants it and --no-core does not forbid it."""
    crash = load_crash(args)
    try:
        if crash.task_type != 0:
            raise LocalError("report takes a process crash (--dir, --core, --coredumpctl, --apport), not a vmcore")
        executable = (crash.directory / "executable").read_text().strip()
        try:
            document = unwind.encode(unwind.ureport(crash, executable, __version__))
        except unwind.FilesChanged as err:
            if args.no_core:
                raise LocalError(f"No coreless report: {err}") from None
            reporter.say(f"No coreless report: {err}; sending the core instead")
            return follow(server, args, reporter, *submit(server, crash, args, reporter))
        except unwind.UnwindError as err:
            raise LocalError(str(err)) from None
        answer, sent = server.report(document)
        core_size = (crash.directory / "coredump").stat().st_size
        reporter.say(f"Report of {human_size(sent)} sent (the core is {human_size(core_size)})")
        reporter.say(answer.get("message", ""))
        if answer.get("core_wanted") and not args.no_core:
            return follow(server, args, reporter, *submit(server, crash, args, reporter))
    finally:
        crash.discard()
    answer["bytes_sent"] = sent
    emit(args, answer, answer.get("backtrace", ""))
    return EXIT_OK


def save(directory: str, name: str, text: str, reporter: Reporter) -> None:
    path = os.path.join(directory, name)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as err:
        raise LocalError(f"cannot save the {name} into {directory}: {err.strerror}") from None
    reporter.say(f"Saved {path}")


def emit(args: argparse.Namespace, result: Mapping[str, Any], text: str | None) -> None:
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    elif text is not None:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


def create(server: RetraceServer, args: argparse.Namespace, reporter: Reporter) -> int:
    task_id, password = upload_crash(server, args, reporter)
    emit(args, {"task_id": task_id, "password": password}, f"Task Id: {task_id}\nTask Password: {password}")
    return EXIT_OK


def settings(server: RetraceServer, args: argparse.Namespace, _reporter: Reporter) -> int:
    current = server.settings()
    lines = [f"{key} {' '.join(value) if isinstance(value, tuple) else value}" for key, value in vars(current).items()]
    emit(args, vars(current), "\n".join(lines))
    return EXIT_OK


def task_operation(server: RetraceServer, args: argparse.Namespace, _reporter: Reporter) -> int:
    if not args.task or not args.password:
        raise LocalError(f"{args.operation} needs --task ID and --password PASSWORD")
    if args.operation == "status":
        status = server.status(args.task, args.password)
        emit(args, {"status": status.state, "sentence": status.sentence},
             f"Task Status: {status.state}\n{status.sentence}")
        return EXIT_OK
    text = server.result(args.task, args.password, args.operation)
    if text is None:
        if args.operation != "exploitable":
            raise ServerRefused(f"The server has no {args.operation} for task {args.task} (yet)")
        text = "No exploitability information available."
    emit(args, {args.operation: text}, text)
    return EXIT_OK


OPERATIONS = {"batch": batch, "create": create, "report": report, "settings": settings,
              **dict.fromkeys(TASK_OPERATIONS, task_operation)}


def print_headers(response: requests.Response) -> None:
    print(f"HTTP {response.status_code} {response.request.method} {response.url}", file=sys.stderr)
    for key, value in response.headers.items():
        print(f"{key}: {value}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.status_delay is None:
        try:
            args.status_delay = _seconds(os.environ.get("ABRT_STATUS_DELAY", "10"))
        except argparse.ArgumentTypeError as err:
            parser.error(f"ABRT_STATUS_DELAY: {err}")
    reporter = Reporter()
    try:
        if not args.uri:
            raise LocalError("give the server with --uri URI or the RETRACE_SERVER_URI environment variable")
        verify = False if args.insecure else (args.cafile or True)
        if args.insecure:
            reporter.say("warning: the server's TLS certificate is not verified (-k)")
        server = RetraceServer(args.uri, verify, print_headers if args.headers else None)
        return OPERATIONS[args.operation](server, args, reporter)
    except (LocalError, CrashInputError) as err:
        return refuse(args, reporter, str(err), EXIT_LOCAL)
    except ServerRefused as err:
        return refuse(args, reporter, str(err), EXIT_REFUSED)
    except KeyboardInterrupt:
        return refuse(args, reporter, "interrupted", EXIT_LOCAL)


def refuse(args: argparse.Namespace, reporter: Reporter, sentence: str, status: int) -> int:
    """Say why on stderr; with --json, a script reading stdout gets the same as ``{"error", "exit_status"}``."""
    reporter.say(f"{PROG}: {sentence}")
    if args.json:
        print(json.dumps({"error": sentence, "exit_status": status}, indent=1, sort_keys=True))
    return status
