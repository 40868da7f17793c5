"""The one place an environment is chosen: ``RetraceEnvironment`` names a row of ``ENVIRONMENTS``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrace_server.environments.chroot import ChrootEnvironment
from retrace_server.environments.mock import MockEnvironment
from retrace_server.environments.sysroot import SysrootEnvironment

if TYPE_CHECKING:
    from retrace_server.config import Config
    from retrace_server.environments.base import Environment

ENVIRONMENTS: dict[str, type[Environment]] = {
    environment.name: environment for environment in (SysrootEnvironment, ChrootEnvironment, MockEnvironment)
}


def environment_for(config: Config) -> type[Environment]:
    """The environment ``config`` asks for (its key is checked against the same names when the file is read)."""
    return ENVIRONMENTS[config.RetraceEnvironment]
