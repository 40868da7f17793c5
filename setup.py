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
    # What pip installs is the client's need alone, so `pip install retrace-server` gives a working
    # retrace-client; the server's Python libraries are the "server" extra (rpm, seccomp and mod_wsgi
    # only come from the distribution: `make` uses a venv with --system-site-packages and --no-deps).
    install_requires=["requests>=2.25"],
    extras_require={
        "server": ["WebOb>=1.8", "python-magic>=0.4.20", "zstandard>=0.18", "prometheus-client>=0.16"],
        "celery": ["celery>=5.4,<6"],
    },
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
