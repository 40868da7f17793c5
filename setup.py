import re
from pathlib import Path

from setuptools import setup

# One version, kept in the package that every command reports it from.
VERSION = re.search(r'__version__ = "([^"]+)"', (Path(__file__).parent / "retrace" / "__init__.py").read_text())[1]

setup(
    name="retrace-server",
    version=VERSION,
    description="Turn C/C++ coredumps into symbolized backtraces over an ABRT-compatible HTTPS API",
    license="GPL-2.0-or-later",
    python_requires=">=3.9",
    packages=["retrace", "retrace.intake", "retrace.tasks", "retrace.packaging", "retrace.environments",
              "retrace.analysis", "wsgi", "worker", "client", "reposync", "cleanup"],
    package_data={"wsgi": ["retrace.wsgi"], "reposync": ["distributions/*.conf"]},
    data_files=[
        ("share/retrace-server", ["httpd/retrace.conf", "config/retrace-server.conf", "config/retrace-server.cron",
                                  "config/retrace-server.logrotate"]),
        ("share/retrace-server/systemd", [
            "config/systemd/retrace-server-cleanup.service", "config/systemd/retrace-server-cleanup.timer",
            "config/systemd/retrace-server-reposync.service", "config/systemd/retrace-server-reposync.timer",
            "config/systemd/retrace-server-debuginfod.service", "config/systemd/retrace-server-worker.service",
            "config/systemd/retrace-server-dispatcher.service",
        ]),
    ],
    # webob, python-magic, zstandard and rpm come from the distribution
    # (apt/dnf), which the venv sees through --system-site-packages.
    install_requires=[],
    entry_points={
        "console_scripts": [
            "retrace-server-httpd = wsgi.httpd:main",
            "retrace-server-worker = worker.cli:main",
            "retrace-server-interact = worker.interact:main",
            "retrace-server-dispatcher = worker.dispatcher:main",
            "retrace-client = client.cli:main",
            "retrace-server-reposync = reposync.cli:main",
            "retrace-server-cleanup = cleanup.cli:main",
            "retrace-server-debuginfod = wsgi.debuginfod_server:main",
        ],
    },
)
