"""Server configuration: upstream's INI file and key names, validated once.

The file has a ``[retrace]`` section whose keys keep the names and meanings
of ABRT's Retrace Server, so an admin's old ``retrace-server.conf`` still
reads the same.  ``load_config`` returns a frozen ``Config``; the config is
then passed around as an argument, never looked up from a global.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from retrace_server.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/retrace-server/retrace-server.conf"
CONFIG_PATH_VARIABLE = "RETRACE_SERVER_CONFIG_PATH"
SECTION = "retrace"
MIB = 1024 * 1024

_T = TypeVar("_T")
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def _as_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("must be 1 or 0 (or yes/no, true/false, on/off)")


def _as_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("must be a whole number") from None


def _as_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("must be a number") from None


def _as_path(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def _as_str(text: str) -> str:
    return text.strip()


# By the type a field is annotated with (its name: the annotations are not evaluated).
_CONVERTERS: dict[str, Callable[[str], object]] = {"bool": _as_bool, "int": _as_int, "float": _as_float, "Path": _as_path,
                                                 "str": _as_str}


def _key(default: _T, minimum: float | None = None, maximum: float | None = None,
         choices: tuple[str, ...] | None = None, unit: str = "") -> _T:
    """A config field with its INI key bounds; the INI key is the field name."""
    return dataclasses.field(
        default=default,
        metadata={"minimum": minimum, "maximum": maximum, "choices": choices, "unit": unit},
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Every tunable of the server; field names are the INI keys.

    Sizes are in MiB and ages in hours, as upstream; the ``*_bytes``
    properties convert so that no caller multiplies by hand.
    """

    SaveDir: Path = _key(Path("/var/spool/retrace-server"))
    RepoDir: Path = _key(Path("/var/cache/retrace-server"))
    LogDir: Path = _key(Path("/var/log/retrace-server"))
    # Upstream's hooks configuration (retrace_server.tasks.hooks); hooks/*.conf beside it are read too.
    HookConfig: Path = _key(Path("/etc/retrace-server/retrace-server-hooks.conf"))
    # Where the services' own logs go (retrace_server.adminlog); task logs stay in their tasks.
    LogTo: str = _key("file", choices=("file", "syslog"))
    SyslogSocket: Path = _key(Path("/dev/log"))
    CacheDir: Path = _key(Path("/var/cache/retrace-server-unpacked"))
    RetraceEnvironment: str = _key("sysroot", choices=("sysroot", "chroot", "mock"))
    ChrootPackages: str = _key("gdb")
    MockPath: str = _key("mock")
    MockIsolation: str = _key("auto", choices=("auto", "nspawn", "simple"))
    MockBootstrap: str = _key("image", choices=("image", "chroot", "off"))
    GdbTimeout: float = _key(300.0, minimum=0.01, maximum=86400, unit="seconds")
    GdbMemoryLimit: int = _key(4096, minimum=64, unit="MiB")
    DebuggerOutputLimit: int = _key(64, minimum=1, maximum=4096, unit="MiB")
    RequireHTTPS: bool = _key(True)
    AllowAPIDelete: bool = _key(False)
    AllowInteractive: bool = _key(False)
    InteractiveTimeLimit: int = _key(14400, minimum=60, maximum=86400 * 7, unit="seconds")
    AllowMetrics: bool = _key(False)
    MaxParallelTasks: int = _key(5, minimum=1, maximum=1000)
    MaxQueuedTasks: int = _key(20, minimum=0, maximum=100000)
    MaxPackedSize: int = _key(50, minimum=1, unit="MiB")
    MaxUnpackedSize: int = _key(1024, minimum=1, unit="MiB")
    MinStorageLeft: int = _key(1024, minimum=0, unit="MiB")
    MaxUploadsPerClient: int = _key(4, minimum=1, maximum=100000)
    # Tasks one address may have waiting for a worker (uploads in flight included); 429 beyond.
    MaxQueuedPerClient: int = _key(5, minimum=1, maximum=100000)
    # What one xz or zstd decoder may hold: a stream whose header declares a larger window is refused.
    MaxDecoderMemory: int = _key(256, minimum=16, maximum=4096, unit="MiB")
    MaxUploadSeconds: int = _key(3600, minimum=10, maximum=86400 * 7, unit="seconds")
    # The slowest a request body may come, averaged over its whole length (Apache) and over every 30 s (the
    # application); slower ones are cut with 408 so that trickling clients cannot hold the threads.  0: no floor.
    MinUploadRate: int = _key(8, minimum=0, maximum=1024 * 1024, unit="KiB/s")
    # A coredump larger than PrefetchAbove has its packages unpacked while it uploads (Dispatcher = local): the
    # dispatcher follows the core as it is written, from its notes and the build-ids in its memory.
    PrefetchPackages: bool = _key(True)
    PrefetchAbove: int = _key(4, minimum=0, maximum=1024 * 1024, unit="MiB")
    AllowVMCoreTask: bool = _key(True)
    # The md5 of every uploaded vmcore, computed while it streams in (the task's md5sum file); cleanup then
    # stores identical vmcores once.
    CalculateMd5: bool = _key(False)
    MaxVmcorePackedSize: int = _key(4096, minimum=1, unit="MiB")
    MaxVmcoreUnpackedSize: int = _key(65536, minimum=1, unit="MiB")
    KernelDebuggerPath: Path = _key(Path("/usr/bin/crash"))
    # crash commands run after ours on every vmcore, ";"-separated; each one's output is results/crash-<name>.
    CrashCommands: str = _key("")
    # A directory of crash extensions (shared objects) loaded with "extend" into every crash session, batch
    # and interactive; empty: none.
    CrashExtensions: str = _key("")
    ProcessCommunicateTimeout: float = _key(3600.0, minimum=0.01, maximum=86400, unit="seconds")
    VmcoreDumpLevel: int = _key(0, minimum=0, maximum=31)
    VmcoreDumpSavePercent: int = _key(10, minimum=0, maximum=100)
    DeleteTaskAfter: int = _key(120, unit="hours")
    DeleteFailedTaskAfter: int = _key(24, unit="hours")
    ArchiveTaskAfter: int = _key(0, unit="hours")
    DropDir: Path = _key(Path("/srv/retrace/archive"))
    WorkerTimeLimit: int = _key(3600, minimum=1, unit="seconds")
    CacheSize: int = _key(20480, minimum=1, unit="MiB")
    KeepRawhideLatest: int = _key(3, minimum=1)
    KeepSupersededDays: int = _key(400, minimum=0, unit="days")
    UseCreaterepoUpdate: bool = _key(False)
    SyncReleases: str = _key("")
    PluginDir: Path = _key(Path("/etc/retrace-server/plugins"))
    DebuginfodURLs: str = _key("")
    DebuginfodReleases: str = _key("")
    DebuginfodDeadline: float = _key(60.0, minimum=0.1, unit="seconds")
    DownloadDeadline: float = _key(600.0, minimum=1, maximum=86400, unit="seconds")
    DebuginfodTimeout: float = _key(10.0, minimum=0.1, unit="seconds")
    DebuginfodRetries: int = _key(1, minimum=0, maximum=10)
    DebuginfodMaxFileSize: int = _key(2048, minimum=1, unit="MiB")
    DebuginfodMissTTL: int = _key(3600, minimum=0, unit="seconds")
    DebuginfodServe: bool = _key(False)
    DebuginfodPort: int = _key(8002, minimum=1, maximum=65535)
    Dispatcher: str = _key("local", choices=("local", "celery"))
    # The architectures a Celery worker host takes crashes of; empty: its own and every one its debuggers read.
    RetraceArchitectures: str = _key("")
    BrokerURL: str = _key("")
    DeliveryLimit: int = _key(3, minimum=1, maximum=100)
    BrokerHeartbeat: int = _key(10, minimum=0, unit="seconds")
    RequireGPGCheck: bool = _key(True)
    # Not [retrace] keys: the [debuginfod] section, release id -> its own server list,
    # and the [gpgkeys] section, release id (or <dist>-<version>, or <dist>) -> the key files trusted for it.
    debuginfod_by_release: tuple[tuple[str, tuple[str, ...]], ...] = dataclasses.field(
        default=(), metadata={"section": "debuginfod"})
    gpg_keys_by_release: tuple[tuple[str, tuple[str, ...]], ...] = dataclasses.field(
        default=(), metadata={"section": "gpgkeys"})
    # The [debuggers] section: architecture -> the gdb that reads its cores (retrace.analysis.debuggers).
    debuggers_by_arch: tuple[tuple[str, str], ...] = dataclasses.field(default=(), metadata={"section": "debuggers"})
    # The [history] section: release id, <dist>-<version> or <dist> -> its history sources in the order they
    # are tried, each (kind, URL) (retrace_server.packaging.history); upstream's KojiRoot adds a Koji tree
    # for every RPM release.
    history_by_release: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = dataclasses.field(
        default=(), metadata={"section": "history"})
    KojiRoot: str = _key("")
    # Where a vmcore's kernel debuginfo is fetched when no release has it: $VERSION, $RELEASE and $ARCH of
    # the dump's kernel are put in (upstream's key).
    KernelDebuginfoURL: str = _key("")
    # The task manager (/manager) for support engineers.  Apache authenticates its users (httpd/retrace.conf):
    # ManagerUserFile names an htpasswd file for Basic authentication, empty leaves it to the Apache config.
    AllowTaskManager: bool = _key(False)
    ManagerUserFile: str = _key("")
    # 1: only the users in TaskManagerDeleteUsers (white-space separated) may delete tasks in the manager.
    TaskManagerAuthDelete: bool = _key(False)
    TaskManagerDeleteUsers: str = _key("")
    # A link for case numbers on the manager's pages; {caseno} (or upstream's %d) is replaced by the number.
    CaseNumberURL: str = _key("")
    # Directories on this server whose files the manager may start tasks from (white-space separated).
    ImportDirs: str = _key("")
    # The FTP drop customers upload vmcores to; the manager lists it and starts tasks from its files.
    UseFTPTasks: bool = _key(False)
    FTPSSL: bool = _key(False)
    FTPHost: str = _key("")
    FTPUser: str = _key("anonymous")
    FTPPass: str = _key("")
    FTPDir: str = _key("/")
    FTPBufferSize: int = _key(16, minimum=1, maximum=1024, unit="MiB")
    # E-mail the task's addresses when a manager task ends, through SMTPServer (host:port, no authentication).
    EmailNotify: bool = _key(False)
    EmailNotifyFrom: str = _key("retrace-server@localhost")
    SMTPServer: str = _key("localhost:25")
    # Who sees what of /problems (crash buckets): "counts" shows the list to everyone and a bucket's backtrace
    # and reports only in the task manager (/manager/problems/...), "all" shows everything to everyone.
    ProblemsPublic: str = _key("counts", choices=("counts", "all"))
    SignatureRules: Path = _key(Path("/etc/retrace-server/signature-rules.conf"))
    # How long each report's own row (time, version, release) is kept; buckets keep their counts.
    ReportRetention: int = _key(90, minimum=1, unit="days")
    # A bucket that no report or retrace reached for this long goes, with its backtrace.
    BucketRetention: int = _key(365, minimum=1, unit="days")
    DBFile: str = _key("stats.db")
    StatsIPRetention: int = _key(24, minimum=0, unit="hours")
    TaskIdLength: int = _key(9, minimum=6, maximum=18)
    TaskPassLength: int = _key(32, minimum=16, maximum=128)

    @property
    def max_packed_bytes(self) -> int:
        return self.MaxPackedSize * MIB

    @property
    def max_unpacked_bytes(self) -> int:
        return self.MaxUnpackedSize * MIB

    @property
    def prefetch_above_bytes(self) -> int:
        return self.PrefetchAbove * MIB

    @property
    def max_vmcore_packed_bytes(self) -> int:
        return self.MaxVmcorePackedSize * MIB

    @property
    def max_vmcore_unpacked_bytes(self) -> int:
        return self.MaxVmcoreUnpackedSize * MIB

    def unpacked_cap_bytes(self, vmcore: bool) -> int:
        """What one task's crash data may unpack to (MaxVmcoreUnpackedSize, else MaxUnpackedSize)."""
        return self.max_vmcore_unpacked_bytes if vmcore else self.max_unpacked_bytes

    @property
    def vmcore_upload_cap_bytes(self) -> int:
        """What a type 2 upload may declare before Apache refuses it (the coredump cap when vmcores are off)."""
        return self.max_vmcore_packed_bytes if self.AllowVMCoreTask else self.max_packed_bytes

    @property
    def largest_upload_bytes(self) -> int:
        """What Apache lets through (LimitRequestBody); each task type's own cap is checked after it."""
        return max(self.max_packed_bytes, self.max_vmcore_packed_bytes if self.AllowVMCoreTask else 0)

    @property
    def min_upload_rate_bytes(self) -> int:
        return self.MinUploadRate * 1024

    @property
    def decoder_memory_bytes(self) -> int:
        return self.MaxDecoderMemory * MIB

    @property
    def min_storage_left_bytes(self) -> int:
        return self.MinStorageLeft * MIB

    @property
    def gdb_memory_limit_bytes(self) -> int:
        return self.GdbMemoryLimit * MIB

    @property
    def debugger_output_limit_bytes(self) -> int:
        return self.DebuggerOutputLimit * MIB

    @property
    def cache_size_bytes(self) -> int:
        return self.CacheSize * MIB

    @property
    def sync_releases(self) -> list[str]:
        """``SyncReleases`` as a list of release ids (``reposync --all``)."""
        return self.SyncReleases.split()

    def debuginfod_urls(self, release: object) -> list[str]:
        """The debuginfod servers for ``release``: its own [debuginfod] list, else DebuginfodURLs."""
        own = dict(self.debuginfod_by_release).get(str(release))
        return list(own) if own is not None else self.DebuginfodURLs.split()

    def gpg_keys(self, release: object) -> list[Path]:
        """The key files trusted for ``release`` (``fedora-41-x86_64``): its own [gpgkeys] line, else its
        ``<dist>-<version>`` line (one key serves every architecture), else its ``<dist>`` line."""
        keys = dict(self.gpg_keys_by_release)
        full = str(release)
        for name in (full, full.rsplit("-", 1)[0], full.split("-", 1)[0]):
            if name in keys:
                return [Path(path) for path in keys[name]]
        return []

    def history_sources(self, release: object) -> list[tuple[str, str]]:
        """``[(kind, URL)]`` tried for ``release`` when a build is in no synced index: its own [history] line,
        else its ``<dist>-<version>`` line, else its ``<dist>`` line; then KojiRoot for RPM distributions."""
        lines = dict(self.history_by_release)
        full = str(release)
        found = next((list(lines[name]) for name in (full, full.rsplit("-", 1)[0], full.split("-", 1)[0])
                      if name in lines), [])
        if self.KojiRoot and full.split("-", 1)[0] not in _APT_DISTRIBUTIONS:
            found.append(("koji", self.KojiRoot.rstrip("/")))
        return found

    def debugger(self, arch: str) -> str | None:
        """The gdb the [debuggers] section names for ``arch`` cores, or None."""
        return dict(self.debuggers_by_arch).get(arch)

    def required_gpg_keys(self, release: object) -> list[Path] | None:
        """The key files packages of ``release`` must be signed with; None while RequireGPGCheck = 0."""
        return self.gpg_keys(release) if self.RequireGPGCheck else None

    @property
    def debuginfod_releases(self) -> list[str]:
        """Releases served through debuginfod alone: DebuginfodReleases (given servers) and [debuginfod]'s."""
        listed = [release for release in self.DebuginfodReleases.split() if self.debuginfod_urls(release)]
        return sorted(set(listed) | {release for release, urls in self.debuginfod_by_release if urls})

    @property
    def import_dirs(self) -> list[Path]:
        return [Path(directory) for directory in self.ImportDirs.split()]

    @property
    def smtp_address(self) -> tuple[str, int]:
        """``(host, port)`` of SMTPServer (port 25 when it names none)."""
        host, _, port = self.SMTPServer.rpartition(":") if ":" in self.SMTPServer else (self.SMTPServer, "", "25")
        return host.strip("[]") or "localhost", int(port) if port.isdigit() else 25

    @property
    def crash_commands(self) -> tuple[str, ...]:
        """``CrashCommands`` as a tuple of plain crash commands (checked when the file was read)."""
        return admin_commands(self.CrashCommands)

    @property
    def task_slots(self) -> int:
        """Tasks the server holds at once: running ones plus queued ones."""
        return self.MaxParallelTasks + self.MaxQueuedTasks


_FIELDS = {field.name: field for field in dataclasses.fields(Config) if "section" not in field.metadata}
DEBUGINFOD_SECTION = "debuginfod"
GPGKEYS_SECTION = "gpgkeys"
DEBUGGERS_SECTION = "debuggers"
HISTORY_SECTION = "history"
HISTORY_KINDS = ("snapshot", "koji")
# Distributions whose archives are apt ones: KojiRoot is for the others.
_APT_DISTRIBUTIONS = ("debian", "ubuntu")


def admin_commands(text: str) -> tuple[str, ...]:
    """``CrashCommands`` (``;``-separated) as a tuple; ValueError for one that could reach a shell or a file
    (crash runs ``!command``, pipes to commands and redirects output)."""
    commands = tuple(command.strip() for command in text.split(";") if command.strip())
    for command in commands:
        if not re.fullmatch(r"[a-z][a-z0-9_]*( [A-Za-z0-9_.,:=+-]+)*", command):
            raise ValueError(f"CrashCommands: {command!r} is not a plain crash command (no !, |, >, quotes)")
    return commands


def _convert(field: dataclasses.Field[Any], text: str, source: object) -> object:
    try:
        value = _CONVERTERS[str(field.type)](text)
    except ValueError as err:
        raise ConfigError(f"{source}: {field.name} {err}, not {text.strip()!r}") from None
    meta = field.metadata
    unit = f" {meta['unit']}" if meta["unit"] else ""
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ConfigError(f"{source}: {field.name} must be at least {meta['minimum']}{unit}, not {value}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ConfigError(f"{source}: {field.name} must be at most {meta['maximum']}{unit}, not {value}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{source}: {field.name} must be one of {', '.join(meta['choices'])}, not {value!r}")
    return value


# Keys of upstream's retrace-server.conf this server does not implement, and what an administrator
# should know instead of "unknown key".
_KERNEL = ("kernel debuginfo comes from the release's repositories and the [debuginfod] servers here, "
           "and vmcores' kernels from the kernel cache")
_FAF = "packages come from RepoDir and the [debuginfod] servers, not from FAF's store"
UPSTREAM_UNSUPPORTED = {
    "AuthGroup": "Apache authenticates here (httpd/retrace.conf), not a group in this file",
    "AllowExternalDir": "tasks on an external directory are not offered",
    "AllowUsrCoreTask": "coredump tasks are always accepted",
    **dict.fromkeys(("KernelChrootRepo", "WgetKernelDebuginfos"), _KERNEL),
    **dict.fromkeys(("UseFafPackages", "FafLinkDir"), _FAF),
    **dict.fromkeys(("BugzillaURL", "BugzillaCredentials", "BugzillaStatus", "BugzillaProduct", "BugzillaComponent",
                     "BugzillaTriggerWords", "BugzillaRegExes", "BugzillaQueryLastChangeDelta"),
                    "upstream's search of Bugzilla for known bugs is not implemented"),
}


class _KeysAsWritten(configparser.ConfigParser):
    """Keys keep their case (upstream's are MixedCase), as ``optionxform = str`` would."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _syntax_error(err: configparser.Error, text: str, source: object) -> str:
    """The parser's complaint with the line it is about, as an editor shows it."""
    if isinstance(err, configparser.MissingSectionHeaderError):
        line = text.splitlines()[err.lineno - 1].strip()
        return f"{source}, line {err.lineno}: the file must begin with a [{SECTION}] section, not {line!r}"
    if isinstance(err, configparser.ParsingError) and err.errors:
        number = err.errors[0][0]
        line = text.splitlines()[number - 1].strip()
        return f"{source}, line {number}: not a valid INI line (KEY = VALUE or [SECTION]): {line!r}"
    lineno: int | None = getattr(err, "lineno", None)
    where = f", line {lineno}" if lineno else ""
    said = re.sub(r"^While reading from .*?\[line +\d+\]: ", "", err.message.splitlines()[0])
    return f"{source}{where}: not a valid INI file: {said}"


def _key_lines(text: str) -> dict[str, int]:
    """The line each key of [retrace] is on, so that a bad value is reported where it is written."""
    lines: dict[str, int] = {}
    section = None
    for number, line in enumerate(text.splitlines(), 1):
        if header := re.match(r"\s*\[([^]]+)\]", line):
            section = header[1]
        elif section == SECTION and (key := re.match(r"\s*([^=:\s#;][^=:]*?)\s*[=:]", line)):
            lines.setdefault(key[1], number)
    return lines


def _did_you_mean(key: str) -> str:
    """A known key a typo or a wrong case probably meant, as the end of a warning ("" when none is close)."""
    by_case = {name.lower(): name for name in _FIELDS}
    close = by_case.get(key.lower()) or next(iter(difflib.get_close_matches(key, _FIELDS, n=1, cutoff=0.8)), None)
    return f"; did you mean {close}?" if close else ""


def parse_config(text: str, source: object) -> tuple[Config, list[str]]:
    """Build a Config from INI text; ``source`` names the file in messages.

    Returns ``(config, warnings)``: unknown keys are not fatal (an old
    upstream file has keys we do not implement), but the admin is told.
    """
    parser = _KeysAsWritten(interpolation=None)
    try:
        parser.read_string(text, source=str(source))
    except configparser.Error as err:
        raise ConfigError(_syntax_error(err, text, source)) from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"{source}: has no [{SECTION}] section")
    values: dict[str, Any] = {}
    warnings = []
    key_lines = _key_lines(text)

    def where(key: str) -> str:
        return f"{source}, line {key_lines[key]}" if key in key_lines else str(source)

    for key, text_value in parser.items(SECTION):
        field = _FIELDS.get(key)
        if field is None and key in UPSTREAM_UNSUPPORTED:
            warnings.append(f"{source}: {key} is upstream's and is ignored here: {UPSTREAM_UNSUPPORTED[key]}")
            continue
        if field is None:
            warnings.append(f"{where(key)}: unknown key {key} in [{SECTION}] is ignored{_did_you_mean(key)}")
            continue
        values[key] = _convert(field, text_value, where(key))
    if parser.has_section(DEBUGINFOD_SECTION):
        values["debuginfod_by_release"] = tuple(
            (release, tuple(url.rstrip("/") for url in urls.split()))
            for release, urls in parser.items(DEBUGINFOD_SECTION)
        )
    if parser.has_section(GPGKEYS_SECTION):
        values["gpg_keys_by_release"] = tuple(
            (release, tuple(paths.split())) for release, paths in parser.items(GPGKEYS_SECTION))
    if parser.has_section(HISTORY_SECTION):
        values["history_by_release"] = tuple(
            (release, _history_line(release, text, source)) for release, text in parser.items(HISTORY_SECTION))
    if parser.has_section(DEBUGGERS_SECTION):
        values["debuggers_by_arch"] = tuple((arch, program.strip()) for arch, program in parser.items(DEBUGGERS_SECTION))
    if values.get("CrashCommands"):
        try:
            admin_commands(values["CrashCommands"])
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
    for directory in values.get("ImportDirs", "").split():
        if not directory.startswith("/"):
            raise ConfigError(f"{source}: ImportDirs must name absolute directories, not {directory!r}")
    if values.get("ManagerUserFile") and not values["ManagerUserFile"].startswith("/"):
        raise ConfigError(f"{source}: ManagerUserFile must be an absolute path, not {values['ManagerUserFile']!r}")
    return Config(**values), warnings


def _history_line(release: str, text: str, source: object) -> tuple[tuple[str, str], ...]:
    """``snapshot https://snapshot.debian.org koji https://...``: (kind, URL) pairs, in order."""
    words = text.split()
    pairs = tuple(zip(words[::2], (url.rstrip("/") for url in words[1::2])))
    for kind, url in pairs:
        if kind not in HISTORY_KINDS or not (url.startswith(("http://", "https://")) or
                                             (kind == "koji" and url.startswith("/"))):
            break
    else:
        if len(words) % 2 == 0 and pairs:
            return pairs
    raise ConfigError(f"{source}: [{HISTORY_SECTION}] {release} must list history sources as KIND URL pairs, "
                      f"KIND one of {', '.join(HISTORY_KINDS)} and URL http(s)://... (a Koji tree may be a local "
                      f"directory), not {text!r}")


def config_path(environ: Mapping[str, str] = os.environ, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the config lives: an explicit path, the environment, the default."""
    return Path(explicit or environ.get(CONFIG_PATH_VARIABLE) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate the config file; unknown keys are logged as warnings."""
    path = config_path(environ, path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the configuration file: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from None
    config, warnings = parse_config(text, path)
    for warning in warnings:
        log.warning("%s", warning)
    return config
