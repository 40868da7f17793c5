"""Archive builders for integration tests: the real tar + xz, or tarfile for hostile shapes."""

import io
import subprocess
import tarfile

XZ_TAR = "application/x-xz-compressed-tar"
ABRT_FILES = ("coredump", "executable", "package", "os_release")


def abrt_archive(problem_dir, names=ABRT_FILES):
    """What abrt-retrace-client sends: ``tar cO --directory=D names | xz -2``."""
    tar = subprocess.Popen(["tar", "cO", f"--directory={problem_dir}", *names], stdout=subprocess.PIPE)
    xz = subprocess.run(["xz", "-2", "-"], stdin=tar.stdout, capture_output=True, check=True)
    tar.stdout.close()
    assert tar.wait() == 0
    return xz.stdout


def xz(data):
    return subprocess.run(["xz", "-2", "-"], input=data, capture_output=True, check=True).stdout


def tar_bytes(members):
    """A tar built from ``(TarInfo, bytes or None)`` pairs, for shapes real tools refuse to make."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def regular(name, data):
    return tarfile.TarInfo(name), data


def problem_members(problem_dir, names=ABRT_FILES, **replace):
    """Members for the problem dir's files, with some contents replaced."""
    members = []
    for name in names:
        data = replace.get(name)
        if data is None:
            data = (problem_dir / name).read_bytes()
        members.append(regular(name, data))
    return members


def parse_settings(text):
    settings = {}
    for line in text.split("\n"):
        key, _, value = line.partition(" ")
        settings[key.lower()] = value
    return settings


def password_header(response):
    return {"X-Task-Password": response.headers["X-Task-Password"]}
