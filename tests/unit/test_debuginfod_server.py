from pathlib import Path

from retrace_server.config import Config
from retrace_server.wsgi.debuginfod_server import namespace_argv, relay_argv
from retrace_server.wsgi.httpd import apache_config


def test_debuginfod_runs_without_the_host_network_and_writes_only_its_own_and_its_socket_directory(tmp_path):
    config = Config(CacheDir=tmp_path / "cache", RepoDir=tmp_path / "repos", SaveDir=tmp_path / "spool")
    argv = namespace_argv(config, Path("/etc/r.conf"), Path("/run/r/debuginfod.sock"))
    command = argv.index("--")
    assert {"--unshare-net", "--unshare-pid", "--die-with-parent"} <= set(argv[:command])
    writable = {argv[i + 1] for i, word in enumerate(argv[:command]) if word == "--bind"}
    assert writable == {str(tmp_path / "cache" / "debuginfod"), "/run/r"}
    readable = {argv[i + 1] for i, word in enumerate(argv[:command]) if word == "--ro-bind"}
    assert str(tmp_path / "repos") in readable and "/" not in readable
    assert not any(str(tmp_path / "spool") in word or word == str(tmp_path / "cache") for word in argv[:command])
    assert argv[command + 1:][-5:] == ["--config", "/etc/r.conf", "--socket", "/run/r/debuginfod.sock",
                                       "--in-namespace"]


def test_relay_joins_the_unix_socket_to_debuginfod_on_the_namespace_loopback():
    assert relay_argv(Path("/run/r/d.sock"), 8002) == [
        "socat", "UNIX-LISTEN:/run/r/d.sock,fork,unlink-early,mode=0666", "TCP:127.0.0.1:8002",
    ]


def test_apache_proxies_buildid_to_the_socket_under_its_run_directory(tmp_path):
    text = apache_config(
        run_dir=tmp_path, host="127.0.0.1", port=8443, user="retrace", group="retrace",
        config=Config(DebuginfodServe=True, LogDir=tmp_path), config_path=Path("/etc/r.conf"),
        retrace_conf=Path("/x/httpd/retrace.conf"), cert=tmp_path / "c", key=tmp_path / "k",
        module_dir=Path("/usr/lib/apache2/modules"), wsgi_module="mod_wsgi.so",
    )
    assert f'Define RETRACE_DEBUGINFOD_SOCKET "{tmp_path}/debuginfod/debuginfod.sock"' in text
    assert "LoadModule proxy_http_module" in text


def test_the_private_tmp_is_mounted_before_the_binds_so_a_venv_under_tmp_stays_visible(tmp_path):
    argv = namespace_argv(Config(CacheDir=tmp_path / "cache", RepoDir=tmp_path / "repos"), Path("/tmp/r.conf"),
                          Path("/run/r/debuginfod.sock"))
    tmpfs = argv.index("--tmpfs")
    binds = [i for i, word in enumerate(argv) if word in ("--ro-bind", "--bind")]
    assert argv[tmpfs + 1] == "/tmp" and tmpfs < min(binds)
