"""retrace-server-httpd as an admin meets it: start, refuse, stop."""

import signal
import socket
import subprocess
import sys
from pathlib import Path

from testkit.server import Server, free_port, make_root, remove_root, write_config

LAUNCHER = str(Path(sys.executable).with_name("retrace-server-httpd"))


def run_launcher(*args):
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_refuses_a_taken_port(certificate):
    root = make_root()
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            result = run_launcher("--config", str(write_config(root)), "--listen", f"127.0.0.1:{port}")
        assert result.returncode == 2
        assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    finally:
        remove_root(root)


def test_refuses_an_invalid_config_naming_key_and_file(tmp_path):
    config = tmp_path / "broken.conf"
    config.write_text("[retrace]\nMaxPackedSize = -3\n")
    result = run_launcher("--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert f"{config}, line 2: MaxPackedSize must be at least 1 MiB, not -3" in result.stderr


def test_warns_about_unknown_keys_and_upstreams_unsupported_ones_by_name_and_still_starts(certificate):
    server = Server(make_root(), *certificate, KernelChrootRepo="http://x/", NoSuchKey="1")
    try:
        assert server.get("/settings").status_code == 200
        assert "unknown key NoSuchKey" in server.launcher_output()
        assert "KernelChrootRepo is upstream's and is ignored here: kernel debuginfo comes from" in server.launcher_output()
    finally:
        server.stop()
        remove_root(server.root)


def test_says_no_release_is_served_yet_and_how_to_add_one(certificate):
    server = Server(make_root(), *certificate)
    try:
        assert "no release is served yet" in server.launcher_output()
        assert "retrace-server-reposync DISTRIBUTION VERSION ARCH" in server.launcher_output()
    finally:
        server.stop()
        remove_root(server.root)


def test_lists_the_releases_it_serves(server):
    assert "releases served: fedora-41-x86_64" in server.launcher_output()


def test_makes_a_self_signed_certificate_when_none_is_given():
    root = make_root()
    port = free_port()
    process = subprocess.Popen(
        [LAUNCHER, "--config", str(write_config(root)), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        line = process.stdout.readline()
        assert "serving https://127.0.0.1:" in line
        pem = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "127.0.0.1"],
            input="", capture_output=True, text=True, timeout=30,
        ).stdout
        assert "subject=CN = 127.0.0.1" in pem
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        remove_root(root)


def test_sigterm_stops_apache_and_exits_0(certificate):
    server = Server(make_root(), *certificate)
    try:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert "stopped" in server.launcher_output()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", server.port)) != 0
    finally:
        server.stop()
        remove_root(server.root)


def test_wsgi_daemons_run_as_the_service_user_not_root(server):
    owners = subprocess.run(["ps", "-o", "user=", "-C", "apache2,httpd"], capture_output=True, text=True).stdout
    daemons = subprocess.run(["pgrep", "-a", "-u", "retrace", "-f", "retrace-server"], capture_output=True, text=True)
    assert daemons.stdout.strip(), owners
    root_daemons = subprocess.run(["pgrep", "-u", "root", "-f", "^retrace-server "], capture_output=True, text=True)
    assert root_daemons.stdout.strip() == ""
