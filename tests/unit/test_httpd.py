import socket
from pathlib import Path

import pytest

from retrace_server.config import Config
from retrace_server.wsgi.httpd import LaunchError, apache_body_limit, apache_config, check_port_free, main, parse_listen


def test_listen_parses_host_and_port():
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:9000") == ("::1", 9000)


@pytest.mark.parametrize("text", ["8443", "localhost:", ":8443", "host:99999", "host:http"])
def test_bad_listen_is_refused(text):
    with pytest.raises(LaunchError, match="HOST:PORT"):
        parse_listen(text)


def test_taken_port_is_refused_with_a_sentence():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)


def test_generated_config_includes_retrace_conf_and_limits_body(tmp_path):
    text = apache_config(
        run_dir=tmp_path, host="127.0.0.1", port=8443, user="retrace", group="retrace",
        config=Config(MaxPackedSize=3, AllowVMCoreTask=False, LogDir=tmp_path), config_path=Path("/etc/r.conf"),
        retrace_conf=Path("/x/httpd/retrace.conf"), cert=tmp_path / "c", key=tmp_path / "k",
        module_dir=Path("/usr/lib/apache2/modules"), wsgi_module="mod_wsgi.so",
    )
    assert 'Include "/x/httpd/retrace.conf"' in text
    assert f'Define RETRACE_MAX_BODY "{3 * 1048576}"' in text
    assert 'Define RETRACE_CONFIG "/etc/r.conf"' in text
    assert "User retrace" in text and "SSLEngine on" in text
    assert "Listen 127.0.0.1:8443" in text


def test_body_limit_follows_the_larger_cap_and_apache_s_2_gib_ceiling():
    assert apache_body_limit(Config(MaxPackedSize=3, MaxVmcorePackedSize=5)) == 5 * 1048576
    assert apache_body_limit(Config(MaxPackedSize=3, MaxVmcorePackedSize=5, AllowVMCoreTask=False)) == 3 * 1048576
    assert apache_body_limit(Config(MaxVmcorePackedSize=4096)) == 0


def test_invalid_config_stops_the_launcher_with_exit_2(tmp_path, capsys):
    config = tmp_path / "bad.conf"
    config.write_text("[retrace]\nMaxParallelTasks = many\n")
    assert main(["--config", str(config), "--listen", "127.0.0.1:1"]) == 2
    assert "MaxParallelTasks must be a whole number" in capsys.readouterr().err


def test_cert_without_key_is_refused(tmp_path, capsys):
    assert main(["--config", "x", "--cert", "c"]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
