"""Distribution plugins: which repositories a release has and where to mirror them.

A plugin is an INI section ``[reposync <distribution>]`` whose keys are
repository names and whose values list mirror URLs, tried in order, with
``$VER`` and ``$ARCH`` filled in.  Built-in plugins (fedora, rhel, centos)
ship in ``reposync/distributions/``; an admin adds or replaces one with a
``*.conf`` file in ``PluginDir`` or a section in retrace-server.conf (read
in that order; a later section replaces the distribution's whole list).
A section with ``type = apt`` describes an apt archive instead
(``retrace_server.reposync.apt``: mirrors, suites, components, codenames).
"""

import configparser
import dataclasses
from pathlib import Path

from retrace_server.reposync.apt import AptSource

BUILT_IN = Path(__file__).resolve().parent / "distributions"
SECTION_PREFIX = "reposync "


class PluginError(Exception):
    """A plugin file cannot be read; the message names it."""


@dataclasses.dataclass(frozen=True)
class Repository:
    name: str
    mirrors: tuple  # URL templates with $VER and $ARCH

    def mirror_urls(self, version, arch):
        return [mirror.replace("$VER", version).replace("$ARCH", arch) for mirror in self.mirrors]


def _read_sections(path, plugins):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
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
        plugins[distribution] = tuple(
            Repository(name, tuple(value.split())) for name, value in items.items() if value.split()
        )


def load_plugins(plugin_dir=None, config_path=None):
    """``{distribution: (Repository, ...)}`` from built-ins, PluginDir and the config file."""
    plugins = {}
    paths = sorted(BUILT_IN.glob("*.conf"))
    if plugin_dir is not None and Path(plugin_dir).is_dir():
        paths += sorted(Path(plugin_dir).glob("*.conf"))
    if config_path is not None:
        paths.append(Path(config_path))
    for path in paths:
        _read_sections(path, plugins)
    return plugins
