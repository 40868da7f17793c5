"""Finding a kernel's debuginfo package by its release string, and taking only its vmlinux (and modules) out."""

import hashlib
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from retrace_server.elf import file_build_id
from retrace_server.packaging.kernel import (
    KernelCache,
    KernelPass,
    debuginfo_packages,
    extract_module_debuginfo,
    extract_vmlinux,
    find_debuginfo_package,
    kernel_arch,
    module_files,
    package_nevra,
)
from retrace_server.packaging.release import ReleaseId


@pytest.mark.parametrize("release, arch", [
    ("6.11.4-301.fc41.x86_64", "x86_64"),
    ("5.14.0-70.el9.aarch64", "aarch64"),
    ("5.14.0-70.el9.x86_64+debug", "x86_64"),
    ("6.1.0-56-cloud-amd64", "x86_64"),
    ("6.1.0-56-arm64", "aarch64"),
    ("6.1.0-56-686-pae", "i386"),
    ("6.1.0-custom", None),
])
def test_architecture_comes_from_the_release_string(release, arch):
    assert kernel_arch(release) == arch


@pytest.mark.parametrize("release, package, member", [
    ("6.11.4-301.fc41.x86_64", "kernel-debuginfo-6.11.4-301.fc41.x86_64.rpm",
     "usr/lib/debug/lib/modules/6.11.4-301.fc41.x86_64/vmlinux"),
    ("5.14.0-70.el9.x86_64+debug", "kernel-debug-debuginfo-5.14.0-70.el9.x86_64.rpm",
     "usr/lib/debug/lib/modules/5.14.0-70.el9.x86_64+debug/vmlinux"),
    ("5.14.0-70.13.1.rt21.83.el9.x86_64", "kernel-rt-debuginfo-5.14.0-70.13.1.rt21.83.el9.x86_64.rpm",
     "usr/lib/debug/lib/modules/5.14.0-70.13.1.rt21.83.el9.x86_64/vmlinux"),
    ("6.1.0-56-cloud-amd64", "linux-image-6.1.0-56-cloud-amd64-dbg_*.deb",
     "usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64"),
])
def test_debuginfo_package_is_named_as_the_distribution_names_it(release, package, member):
    assert debuginfo_packages(release) == [(package, member)]


@pytest.mark.parametrize("file_name, nevra", [
    ("kernel-debuginfo-6.11.4-301.fc41.x86_64.rpm", "kernel-debuginfo-6.11.4-301.fc41.x86_64"),
    ("linux-image-6.1.0-56-cloud-amd64-dbg_6.1.158-1_amd64.deb", "linux-image-6.1.0-56-cloud-amd64-dbg-6.1.158-1.amd64"),
])
def test_package_files_are_named_name_version_release_arch_for_the_statistics(file_name, nevra):
    assert package_nevra(Path("/repos/x/Packages") / file_name) == nevra


def test_first_release_whose_repository_holds_the_package_wins(tmp_path):
    for release in ("debian-11-x86_64", "debian-12-x86_64"):
        (tmp_path / release / "Packages").mkdir(parents=True)
    deb = tmp_path / "debian-12-x86_64" / "Packages" / "linux-image-6.1.0-56-cloud-amd64-dbg_6.1.192-2_amd64.deb"
    deb.touch()
    releases = [ReleaseId.parse("debian-11-x86_64"), ReleaseId.parse("debian-12-x86_64")]
    assert find_debuginfo_package(tmp_path, releases, "6.1.0-56-cloud-amd64") == (
        releases[1], deb, "usr/lib/debug/boot/vmlinux-6.1.0-56-cloud-amd64", None, None)
    assert find_debuginfo_package(tmp_path, releases, "6.1.0-55-cloud-amd64") is None


def test_an_apt_release_gives_the_kernel_debug_package_its_index_lists_in_the_pool(tmp_path):
    release_dir = tmp_path / "repos" / "debian-12-x86_64"
    deb = release_dir / "pool" / "main" / "l" / "linux" / "linux-image-6.1.0-56-cloud-amd64-dbg_6.1.192-2_amd64.deb"
    deb.parent.mkdir(parents=True)
    deb.write_bytes(b"kernel")
    (release_dir / "Packages").write_text(
        "Package: linux-image-6.1.0-56-cloud-amd64-dbg\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\n"
        f"Architecture: amd64\nFilename: {deb.relative_to(release_dir)}\nSize: 6\n"
        f"SHA256: {hashlib.sha256(b'kernel').hexdigest()}\n")
    found = find_debuginfo_package(tmp_path / "repos", [ReleaseId.parse("debian-12-x86_64")], "6.1.0-56-cloud-amd64",
                                   tmp_path / "cache")
    assert found[1] == deb and found[3].nevra == "linux-image-6.1.0-56-cloud-amd64-dbg_6.1.192-2_amd64"


def test_a_metadata_only_release_gives_the_kernel_debug_package_with_its_mirrors_url(tmp_path):
    release_dir = tmp_path / "repos" / "debian-12-x86_64"
    release_dir.mkdir(parents=True)
    (release_dir / "Packages").write_text(
        "Package: linux-image-6.1.0-56-cloud-amd64-dbg\nVersion: 6.1.192-2\nArchitecture: amd64\n"
        "Filename: pool/main/l/linux/linux-image-6.1.0-56-cloud-amd64-dbg_6.1.192-2_amd64.deb\nSize: 6\n"
        f"SHA256: {hashlib.sha256(b'kernel').hexdigest()}\n")
    releases = [ReleaseId.parse("debian-12-x86_64")]
    assert find_debuginfo_package(tmp_path / "repos", releases, "6.1.0-56-cloud-amd64", tmp_path / "cache") is None
    (release_dir / "mirror").write_text("http://deb.example/debian\n")
    found = find_debuginfo_package(tmp_path / "repos", releases, "6.1.0-56-cloud-amd64", tmp_path / "cache")
    assert not found.path.exists() and found.indexed.size == 6
    assert found.url == ("http://deb.example/debian/pool/main/l/linux/"
                         "linux-image-6.1.0-56-cloud-amd64-dbg_6.1.192-2_amd64.deb")


@pytest.fixture(scope="module")
def kernel_debuginfo_rpm(tmp_path_factory):
    """A kernel-debuginfo RPM built by rpmbuild; its "vmlinux" is a real ELF file with a build-id."""
    top = tmp_path_factory.mktemp("rpmbuild")
    release = "6.11.4-301.fc41.x86_64"
    spec = top / "kernel-debuginfo.spec"
    spec.write_text(textwrap.dedent(f"""\
        Name: kernel-debuginfo
        Version: 6.11.4
        Release: 301.fc41
        Summary: test
        License: MIT
        %description
        test
        %install
        mkdir -p %{{buildroot}}/usr/lib/debug/lib/modules/{release}/kernel
        cp /usr/bin/true %{{buildroot}}/usr/lib/debug/lib/modules/{release}/vmlinux
        echo module > %{{buildroot}}/usr/lib/debug/lib/modules/{release}/kernel/pvpanic-pci.ko.debug
        %files
        /usr/lib/debug/lib/modules/{release}
        """))
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}", "--define", "debug_package %{nil}",
                    "--define", "__strip /bin/true", "--define", "__brp_strip /bin/true", "--target", "x86_64",
                    str(spec)], check=True, capture_output=True)
    return next(top.glob("RPMS/x86_64/kernel-debuginfo-*.rpm")), release


def test_only_the_vmlinux_is_taken_out_of_a_kernel_debuginfo_rpm(kernel_debuginfo_rpm, tmp_path):
    rpm_path, release = kernel_debuginfo_rpm
    (_, member), = debuginfo_packages(release)
    target = tmp_path / "vmlinux"
    assert extract_vmlinux(rpm_path, member, target)
    assert file_build_id(target) == file_build_id("/usr/bin/true")
    assert list(tmp_path.iterdir()) == [target]


def test_package_without_the_vmlinux_says_so(kernel_debuginfo_rpm, tmp_path):
    rpm_path, _ = kernel_debuginfo_rpm
    assert not extract_vmlinux(rpm_path, "usr/lib/debug/lib/modules/other/vmlinux", tmp_path / "vmlinux")


def test_kernel_cache_fills_an_entry_once(tmp_path):
    cache = KernelCache(tmp_path)
    fills = []

    def fill(vmlinux):
        fills.append(vmlinux)
        shutil.copy("/usr/bin/true", vmlinux)

    first = cache.get("abc123", fill)
    second = cache.get("abc123", fill)
    assert first.unpacked and not second.unpacked and len(fills) == 1
    os.utime(first.path / "manifest.json", (1, 1))
    assert cache.cached("abc123") == first.root / "vmlinux"
    assert (first.path / "manifest.json").stat().st_mtime > 1
    assert cache.key(None, "6.1.0-56-cloud-amd64") == "release-6.1.0-56-cloud-amd64"


def test_module_file_names_allow_both_spellings_and_refuse_paths():
    assert module_files(Path("k.deb"), {"pvpanic_pci", "../etc/passwd"}) == {
        "pvpanic_pci.ko": "pvpanic_pci", "pvpanic-pci.ko": "pvpanic_pci"}
    assert set(module_files(Path("k.rpm"), {"xfs"})) == {"xfs.ko.debug"}


def test_only_the_asked_modules_come_out_of_a_kernel_debuginfo_rpm(kernel_debuginfo_rpm, tmp_path):
    rpm_path, release = kernel_debuginfo_rpm
    found = extract_module_debuginfo(rpm_path, release, {"pvpanic_pci", "absent"}, tmp_path)
    assert found == {"pvpanic_pci"}
    assert [path.name for path in tmp_path.iterdir()] == ["pvpanic-pci.ko.debug"]


def test_module_debuginfo_joins_the_entry_and_misses_are_remembered(tmp_path):
    cache = KernelCache(tmp_path)
    cache.get("abc123", lambda vmlinux: shutil.copy("/usr/bin/true", vmlinux))

    def fill(target):
        (target / "pvpanic.ko").write_bytes(b"debug")
        return {"pvpanic"}

    assert cache.add_modules("abc123", {"pvpanic", "out_of_tree"}, fill) == {"pvpanic"}
    assert (cache.modules_dir("abc123") / "pvpanic.ko").read_bytes() == b"debug"
    assert cache.missing_modules("abc123") == {"out_of_tree"}
    size = int((cache.entry_path("abc123") / "size").read_text())
    assert size == Path("/usr/bin/true").stat().st_size + len(b"debug") + len("out_of_tree\n")


def test_one_pass_gives_the_vmlinux_first_then_the_loaded_modules_and_leaves_nothing(kernel_debuginfo_rpm, tmp_path):
    rpm_path, release = kernel_debuginfo_rpm
    (_, member), = debuginfo_packages(release)
    (tmp_path / "kernel").mkdir()
    one_pass = KernelPass(rpm_path, member, release, tmp_path / "kernel")
    try:
        assert one_pass.vmlinux(tmp_path / "vmlinux")
        assert file_build_id(tmp_path / "vmlinux") == file_build_id("/usr/bin/true")
        (tmp_path / "modules").mkdir()
        assert one_pass.modules({"pvpanic_pci", "absent"}, tmp_path / "modules") == {"pvpanic_pci"}
        assert [path.name for path in (tmp_path / "modules").iterdir()] == ["pvpanic-pci.ko.debug"]
    finally:
        one_pass.close()
    assert list((tmp_path / "kernel").iterdir()) == [], "the modules no dump loaded went with the pass"


def test_a_pass_over_a_package_without_the_vmlinux_says_so_and_close_ends_it(kernel_debuginfo_rpm, tmp_path):
    rpm_path, _ = kernel_debuginfo_rpm
    one_pass = KernelPass(rpm_path, "usr/lib/debug/lib/modules/other/vmlinux", "other", tmp_path)
    assert not one_pass.vmlinux(tmp_path / "vmlinux") and not (tmp_path / "vmlinux").exists()
    one_pass.close()
    assert list(tmp_path.iterdir()) == []


def test_a_pass_never_started_gives_no_modules(kernel_debuginfo_rpm, tmp_path):
    rpm_path, release = kernel_debuginfo_rpm
    one_pass = KernelPass(rpm_path, "vmlinux", release, tmp_path)
    assert one_pass.modules({"pvpanic_pci"}, tmp_path) is None
    one_pass.close()
