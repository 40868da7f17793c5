"""Distribution plugins: which repositories a release has and where to mirror them.

A plugin is an INI section ``[reposync <distribution>]`` whose keys are
repository names and whose values list mirror URLs, tried in order, with
``$VER`` and ``$ARCH`` filled in.  Built-in plugins (fedora, rhel, centos)
ship in ``reposync/distributions/``; an admin adds or replaces one with a
``*.conf`` file in ``PluginDir`` or a section in retrace-server.conf (read
in that order; a later section replaces the distribution's whole list).
A mirror is a base URL (http, https, rsync, a directory) or
``metalink:URL`` or ``mirrorlist:URL``; ``sslclientcert``, ``sslclientkey``
and ``sslcacert`` give the TLS files the section's https mirrors want.
A section with ``type = apt`` describes an apt archive instead
(``retrace_server.reposync.apt``: mirrors, suites, components, codenames).
"""
from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from retrace_server.reposync.apt import AptSource
from retrace_server.reposync.mirrors import TlsFiles

if TYPE_CHECKING:
    from retrace_server.paths import StrPath

BUILT_IN = Path(__file__).resolve().parent / "distributions"
SECTION_PREFIX = "reposync "


class PluginError(Exception):
    """A plugin file cannot be read; the message names it."""


# Keys of an rpm-md section that are not repositories: the TLS files every mirror of the distribution is
# reached with (e.g. the RHEL CDN's entitlement certificate and key, and its CA).
TLS_KEYS = {"sslclientcert": "client_cert", "sslclientkey": "client_key", "sslcacert": "ca_cert"}


@dataclasses.dataclass(frozen=True)
class Repository:
    name: str
    mirrors: tuple[str, ...]  # URL templates with $VER and $ARCH
    tls: TlsFiles = TlsFiles()

    def mirror_urls(self, version: str, arch: str) -> list[str]:
        return [mirror.replace("$VER", version).replace("$ARCH", arch) for mirror in self.mirrors]


# A distribution's plugin: an apt source, or the repositories of an rpm-md release.
Plugins = dict[str, "AptSource | tuple[Repository, ...]"]


class _CaseKeeping(configparser.ConfigParser):
    """Repository names are kept as written (ConfigParser lowers option names)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _read_sections(path: Path, plugins: Plugins) -> None:
    parser = _CaseKeeping(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as err:
        raise PluginError(f"{path}: not a valid plugin file: {err.message.splitlines()[0]}") from None
    for section in parser.sections():
        if not section.startswith(SECTION_PREFIX):
            continue
        distribution = section[len(SECTION_PREFIX):].strip()
        items = dict(parser.items(section))
        if items.get("type") == "apt":
            plugins[distribution] = AptSource.from_items(items)
            continue
        tls = TlsFiles(**{TLS_KEYS[key]: items.pop(key).strip() for key in list(items) if key in TLS_KEYS})
        for named in (named for named in dataclasses.astuple(tls) if named):
            if not Path(named).is_absolute():
                raise PluginError(f"{path}: [{section}] must name its TLS files by absolute path, not '{named}'")
        plugins[distribution] = tuple(
            Repository(name, tuple(value.split()), tls) for name, value in items.items() if value.split()
        )


def load_plugins(plugin_dir: StrPath | None = None, config_path: StrPath | None = None) -> Plugins:
    """``{distribution: (Repository, ...)}`` from built-ins, PluginDir and the config file."""
    plugins: Plugins = {}
    paths = sorted(BUILT_IN.glob("*.conf"))
    if plugin_dir is not None and Path(plugin_dir).is_dir():
        paths += sorted(Path(plugin_dir).glob("*.conf"))
    if config_path is not None:
        paths.append(Path(config_path))
    for path in paths:
        _read_sections(path, plugins)
    return plugins
