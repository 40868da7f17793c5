"""Kernel vmcores (X-Task-Type 2) through the real HTTPS server, the real worker and the real ``crash``.

The dumps are real: a Debian cloud kernel panicked under QEMU
(testkit/vmcore.py); its -dbg package is the real one, in a
``debian-12-x86_64`` repository directory as a mirror would hold it.
"""

import hashlib
import json
import lzma
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from retrace_server.packaging.kernel import kernel_url_fields
from testkit.crash_extension import build_extension
from testkit.debian import apt_archive
from testkit.debuginfod import Debuginfod
from testkit.helpers import DEBIAN_RELEASE, ZSTD_TAR, add_debian_repository, outcome, retrace, text
from testkit.loopback import FileServer
from testkit.reposync_admin import REPOSYNC, serve_http
from testkit.signing import TEST_KEY
from testkit.vmcore import MARKER, exclude_pages, extract_vmlinux, kernel_debs, kernel_symbol_pages, vmcore_upload

CLIENT = Path(sys.executable).with_name("retrace-client")
CLEANUP = Path(sys.executable).with_name("retrace-server-cleanup")


@pytest.fixture(scope="module")
def kernel_server(warm_kernels, start_server):
    """A server whose only repository is Debian's, holding the kernel's real -dbg package."""
    server = start_server(repository=False, kernels_from=warm_kernels)
    add_debian_repository(server, kernel_debs().dbg)
    return server


@pytest.mark.parametrize("kind", ["elf", "flattened", "kdump"])
def test_each_dump_format_comes_back_as_kernel_log_backtrace_and_summary(kernel_server, uploads, kind):
    task, status = retrace(kernel_server, uploads[kind])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", text(kernel_server, task, "log")
    kernel_log = text(kernel_server, task, "backtrace")
    assert MARKER in kernel_log
    assert "Kernel panic - not syncing: sysrq triggered crash" in kernel_log
    assert "sysrq_handle_crash" in text(kernel_server, task, "results/bt")
    assert 'PANIC: "Kernel panic - not syncing: sysrq triggered crash"' in text(kernel_server, task, "results/sys")
    assert "qemu_fw_cfg" in text(kernel_server, task, "results/mod")


def test_module_debuginfo_is_extracted_once_for_the_modules_the_dump_loaded(start_server, uploads, vmcores):
    server = start_server(repository=False)
    add_debian_repository(server, kernel_debs().dbg)
    first, _ = retrace(server, uploads["kdump"])
    log = text(server, first, "log")
    assert f"Module debuginfo: 3 of 3 loaded modules found in linux-image-{vmcores.release}-dbg" in log
    assert "(taken in the pass that extracted the vmlinux)" in log, "the package was read once"
    assert not list((server.cache_dir / "kernel").glob(".tmp-*")), "the modules the dump did not load are gone"
    modules = text(server, first, "results/mod")
    assert "pvpanic-pci.ko" in modules and "qemu_fw_cfg.ko" in modules and "(not loaded)" not in modules
    second, _ = retrace(server, uploads["elf"])
    log = text(server, second, "log")
    assert "crash loads module debuginfo with mod -S: 3 files in the kernel cache" in log
    assert "Module debuginfo:" not in log
    assert "(not loaded)" not in text(server, second, "results/mod")


def test_flattened_dump_is_reassembled_first(kernel_server, uploads):
    task, status = retrace(kernel_server, uploads["flattened"])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS"
    log = text(kernel_server, task, "log")
    assert "Vmcore: flattened (makedumpfile -F) format" in log
    assert "Reassembled the flattened dump with makedumpfile -R" in log


def test_kernel_is_named_by_the_dump_s_vmcoreinfo(kernel_server, uploads, vmcores):
    task, _ = retrace(kernel_server, uploads["kdump"])
    assert f"Kernel {vmcores.release}, build-id " in text(kernel_server, task, "log")
    assert "(from VMCOREINFO)" in text(kernel_server, task, "log")


def test_statistics_count_the_dump_as_kernel_with_its_release_and_the_debuginfo_package(kernel_server, uploads,
                                                                                      vmcores):
    (task_id, _), status = retrace(kernel_server, uploads["kdump"])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS"
    with sqlite3.connect(kernel_server.save_dir / "stats.db") as stats:
        assert stats.execute("SELECT package, version FROM tasks WHERE taskid = ?", (task_id,)).fetchone() == (
            "kernel", vmcores.release)
        used = stats.execute("SELECT name FROM packages JOIN packages_tasks ON pkgid = packages.id"
                             " JOIN tasks ON packages_tasks.taskid = tasks.id WHERE tasks.taskid = ?",
                             (task_id,)).fetchall()
    assert used == [(f"linux-image-{vmcores.release}-dbg",)]


def test_dump_without_vmcoreinfo_is_identified_by_the_text_search(kernel_server, uploads, vmcores):
    task, status = retrace(kernel_server, uploads["without_vmcoreinfo"])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", text(kernel_server, task, "log")
    log = text(kernel_server, task, "log")
    assert f"Kernel {vmcores.release}, build-id " in log and "(from text search)" in log
    assert MARKER in text(kernel_server, task, "backtrace")


def test_vmcores_have_their_own_size_caps(start_server, uploads, problem_dir):
    from testkit.helpers import submit

    server = start_server(repository=False, MaxVmcorePackedSize="1", MaxVmcoreUnpackedSize="4",
                          MaxPackedSize="50", MaxUnpackedSize="8")
    with open(uploads["kdump"], "rb") as body:
        packed = server.post("/create", data=body, headers={"Content-Type": ZSTD_TAR, "X-Task-Type": "2"})
    assert packed.status_code == 413 and f"the server accepts at most {2**20} bytes" in packed.text
    roomier = start_server(repository=False, MaxVmcorePackedSize="50", MaxVmcoreUnpackedSize="4")
    with open(uploads["kdump"], "rb") as body:
        unpacked = roomier.post("/create", data=body, headers={"Content-Type": ZSTD_TAR, "X-Task-Type": "2"})
    assert unpacked.status_code == 413 and f"{4 * 2**20} bytes, the server's limit" in unpacked.text
    assert server.task_dirs() == [] and roomier.task_dirs() == []
    submit(server, problem_dir)


def test_missing_vmlinux_fails_naming_the_kernel_and_the_package(start_server, uploads, vmcores):
    server = start_server(repository=False)
    (server.repo_dir / DEBIAN_RELEASE / "Packages").mkdir(parents=True, mode=0o755)
    task, status = retrace(server, uploads["kdump"])
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert f"no vmlinux for kernel {vmcores.release} (build-id " in outcome(status)
    assert f"linux-image-{vmcores.release}-dbg is in none of {DEBIAN_RELEASE}" in outcome(status)
    assert "no debuginfod server is configured" in outcome(status)


def test_vmlinux_comes_from_debuginfod_by_the_kernel_build_id_without_a_mirror(start_server, uploads, vmcores,
                                                                            work_dir):
    vmlinux = extract_vmlinux(kernel_debs(), work_dir / "debuginfod-vmlinux")
    build_id = subprocess.run(["eu-readelf", "-n", str(vmlinux)], capture_output=True, text=True,
                              check=True).stdout.split("Build ID: ")[1].split()[0]
    debuginfod = Debuginfod([vmlinux.parent], build_id, files=True)
    try:
        server = start_server(repository=False, DebuginfodURLs=debuginfod.url)
        task, status = retrace(server, uploads["kdump"])
    finally:
        debuginfod.stop()
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", text(server, task, "log")
    assert f"Fetched the vmlinux from debuginfod {debuginfod.url}" in text(server, task, "log")
    assert "sysrq_handle_crash" in text(server, task, "results/bt")


def test_a_metadata_only_release_downloads_the_kernel_debuginfo_package_from_its_mirror(
        start_server, uploads, vmcores, work_dir):
    """The release holds the signed indexes only; the -dbg package (hundreds of MiB) is fetched for the
    first dump, held to its index's SHA256, read for the vmlinux and the module debuginfo, then removed."""
    TEST_KEY.ensure()
    mirror, url = serve_http(apt_archive(work_dir / "kernel-mirror", [kernel_debs().dbg], key=TEST_KEY,
                                         contents=False))  # the kernel's package is found in Packages
    try:
        server = start_server(repository=False, extra_ini=(
            f"[gpgkeys]\ndebian = {TEST_KEY.public}\n[reposync debian]\ntype = apt\nmirrors = {url}\n"
            "suites = $CODENAME\ncomponents = main\ncodenames = 12:bookworm\n"))
        sync = subprocess.run([str(REPOSYNC), "--config", str(server.config_path), "debian", "12", "x86_64",
                               "--metadata-only"], capture_output=True, text=True, timeout=600)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        task, status = retrace(server, uploads["kdump"])
    finally:
        mirror.terminate()
        mirror.wait()
    log = text(server, task, "log")
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert f"Downloaded linux-image-{vmcores.release}-dbg_" in log and f"from {url}pool/main/" in log
    assert "Module debuginfo: 3 of 3 loaded modules found" in log
    assert "sysrq_handle_crash" in text(server, task, "results/bt")
    assert not list((server.cache_dir / "downloads").iterdir()), "the package is removed once read"


def test_a_kernel_no_release_has_comes_from_kernel_debuginfo_url(start_server, uploads, vmcores, work_dir):
    """Upstream's KernelDebuginfoURL: a directory per kernel ($BASENAME/$VERSION/$RELEASE/$ARCH, as Koji lays
    out kernels), here a loopback HTTP tree holding the real -dbg package; no release, no debuginfod."""
    fields = kernel_url_fields(vmcores.release)
    tree = work_dir / "kernel-debuginfo-url"
    place = tree.joinpath(fields["BASENAME"], fields["VERSION"], fields["RELEASE"], fields["ARCH"])
    place.mkdir(parents=True, exist_ok=True)
    package = kernel_debs().dbg
    if not (place / package.name).exists():
        (place / package.name).symlink_to(package)
    files = FileServer(tree)
    try:
        server = start_server(repository=False, KernelDebuginfoURL=f"{files.url}/$BASENAME/$VERSION/$RELEASE/$ARCH/")
        task, status = retrace(server, uploads["kdump"])
    finally:
        files.close()
    log = text(server, task, "log")
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert (f"The kernel's debuginfo package from KernelDebuginfoURL: {files.url}/linux/{fields['VERSION']}/"
            f"{fields['RELEASE']}/{fields['ARCH']}/{package.name}") in log
    assert "Module debuginfo: 3 of 3 loaded modules found" in log
    assert "sysrq_handle_crash" in text(server, task, "results/bt")
    assert not list((server.cache_dir / "downloads").iterdir()), "the package is removed once read"


@pytest.fixture(scope="module")
def split_parts(vmcores, work_dir):
    """The dump as makedumpfile --split writes it for a big machine: three kdump-compressed files."""
    directory = work_dir / "split-vmcore"
    directory.mkdir(exist_ok=True)
    parts = [directory / f"vmcore.{number}" for number in (1, 2, 3)]
    if not all(part.is_file() for part in parts):
        subprocess.run(["makedumpfile", "--split", "-c", "-d", "31", str(vmcores.elf_proc), *map(str, parts)],
                       check=True, capture_output=True)
    return parts


def test_a_split_vmcore_is_reassembled_and_retraced(kernel_server, split_parts, work_dir):
    archive = work_dir / "split-vmcore.tar.zst"
    subprocess.run(["tar", "--zstd", "-cf", str(archive), "-C", str(split_parts[0].parent),
                    *(part.name for part in split_parts)], check=True)
    task, status = retrace(kernel_server, archive)
    log = text(kernel_server, task, "log")
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert "Reassembled the vmcore from its 3 split parts with makedumpfile --reassemble" in log
    assert "sysrq_handle_crash" in text(kernel_server, task, "results/bt")


def test_split_vmcore_parts_out_of_order_are_refused_with_a_sentence(kernel_server, split_parts, work_dir):
    archive = work_dir / "split-vmcore-gap.tar.zst"
    subprocess.run(["tar", "--zstd", "-cf", str(archive), "-C", str(split_parts[0].parent), "vmcore.1", "vmcore.3"],
                   check=True)
    with open(archive, "rb") as body:
        response = kernel_server.post("/create", data=body, headers={"Content-Type": ZSTD_TAR, "X-Task-Type": "2"})
    assert response.status_code == 400
    assert "A split vmcore's parts must be vmcore.1 to vmcore.N" in response.text and "/" not in response.text.split(
        "holds")[1]


def neighbouring_build(directory, release):
    """A -dbg package of kernel ``release`` whose vmlinux is another build (another build-id), in ``directory``."""
    root = directory / "root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{release}-dbg\nVersion: 0.1\nArchitecture: amd64\n"
        "Maintainer: retrace tests <root@localhost>\nDescription: another build\n")
    boot = root / "usr/lib/debug/boot"
    boot.mkdir(parents=True)
    shutil.copy("/usr/bin/true", boot / f"vmlinux-{release}")
    deb = directory / f"linux-image-{release}-dbg_0.1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_vmlinux_of_a_neighbouring_build_is_refused(start_server, uploads, vmcores, work_dir):
    server = start_server(repository=False)
    add_debian_repository(server, neighbouring_build(work_dir / "neighbour", vmcores.release))
    task, status = retrace(server, uploads["kdump"])
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert f"is another build of {vmcores.release}" in outcome(status)
    assert "crash would show a wrong backtrace" in outcome(status)


def test_hanging_crash_is_cut_off_by_the_timeout(warm_kernels, start_server, uploads):
    server = start_server(repository=False, kernels_from=warm_kernels, ProcessCommunicateTimeout="1")
    add_debian_repository(server, kernel_debs().dbg)
    task, status = retrace(server, uploads["kdump"])
    assert status.headers["X-Task-Status"] == "FINISHED_FAILURE"
    assert "crash did not finish within 1 s (ProcessCommunicateTimeout) and was stopped" in outcome(status)
    leftovers = subprocess.run(["pgrep", "-f", f"{task[0]}/crash/vmcore"], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_kept_vmcore_is_stripped_when_vmcore_dump_level_asks(warm_kernels, start_server, uploads):
    server = start_server(repository=False, kernels_from=warm_kernels, VmcoreDumpLevel="31")
    add_debian_repository(server, kernel_debs().dbg)
    task, status = retrace(server, uploads["elf_proc"])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", text(server, task, "log")
    assert "Stripped the vmcore with makedumpfile -d 31" in text(server, task, "log")
    kept = server.save_dir / task[0] / "crash" / "vmcore"
    assert kept.stat().st_size < 64 * 2**20
    assert MARKER in text(server, task, "backtrace")


@pytest.fixture(scope="module")
def page_excluded(vmcores, work_dir):
    """Uploads of the kdump-compressed dump with one page crash needs marked as excluded by makedumpfile, as
    in customer dumps taken at too high a dump level: ``jiffies_64``'s (crash cannot load without it, but
    loads with --zero_excluded: an uptime of zero is harmless) and ``__per_cpu_offset``'s (with zeros there
    crash finds no task: only crash --minimal reads the kernel log)."""
    vmlinux = extract_vmlinux(kernel_debs(), work_dir / "page-excluded-vmlinux")
    pages = kernel_symbol_pages(vmlinux, vmcores.kdump, "jiffies_64", "__per_cpu_offset")
    directory = work_dir / "page-excluded"
    directory.mkdir()
    return {symbol: vmcore_upload(exclude_pages(vmcores.kdump, directory / f"{symbol}.kdump", [pfn]),
                                  directory / symbol) for symbol, pfn in pages.items()}


def crash_outside_usr(directory):
    """The real crash, installed where an administrator puts a newer one (the sandbox must bind it)."""
    directory.mkdir(mode=0o755)
    shutil.copy("/usr/bin/crash", directory / "crash")
    return directory / "crash"


def test_a_dump_crash_loads_only_with_minimal_gives_the_kernel_log_and_the_log_says_why(
        warm_kernels, start_server, page_excluded, work_dir):
    server = start_server(repository=False, kernels_from=warm_kernels,
                          KernelDebuggerPath=str(crash_outside_usr(work_dir / "crash-bin")))
    add_debian_repository(server, kernel_debs().dbg)
    task, status = retrace(server, page_excluded["__per_cpu_offset"])
    log = text(server, task, "log")
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    backtrace = text(server, task, "backtrace")
    assert backtrace.startswith("crash could only read the kernel log (--minimal)")
    assert MARKER in backtrace
    assert "only the kernel log (crash --minimal) is available" in log
    assert "The full load failed: " in log and 'crash: page excluded: kernel virtual address: ' in log
    assert 'type: "__per_cpu_offset"' in log and "The zero excluded load failed: " in log
    assert server.get(f"/{task[0]}/results/bt", headers=task[1]).status_code == 404


def test_retrace_client_sends_a_vmcore_and_prints_the_kernel_log(kernel_server, vmcores):
    result = subprocess.run(
        [str(CLIENT), "batch", "--uri", kernel_server.url, "--cafile", str(kernel_server.cert), "--vmcore",
         str(vmcores.kdump), "--status-delay", "0.2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout
    assert "Retrace job finished successfully" in result.stderr + result.stdout


def test_a_dump_crash_loads_only_with_zero_excluded_takes_that_path_and_the_log_says_why(
        warm_kernels, start_server, page_excluded):
    server = start_server(repository=False, kernels_from=warm_kernels, CrashCommands="kmem -i; ps")
    add_debian_repository(server, kernel_debs().dbg)
    task, status = retrace(server, page_excluded["jiffies_64"])
    log = text(server, task, "log")
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert "crash loaded the dump only with --zero_excluded" in log
    assert "The full load failed: " in log and 'crash: page excluded: kernel virtual address: ' in log
    assert 'type: "jiffies_64"' in log
    assert "sysrq_handle_crash" in text(server, task, "results/bt")
    assert "[PARTIAL DUMP]" in text(server, task, "results/sys")
    assert "TOTAL MEM" in text(server, task, "results/crash-kmem-i")
    assert "init" in text(server, task, "results/crash-ps")


def test_crash_extensions_are_loaded_and_their_commands_land_in_results(warm_kernels, start_server, uploads, vmcores,
                                                                       work_dir):
    extensions = work_dir / "crash-extensions"
    build_extension(extensions)
    (extensions / "broken.so").write_text("not a shared object\n")
    (extensions / "two words.so").write_text("")
    server = start_server(repository=False, kernels_from=warm_kernels, CrashExtensions=str(extensions),
                          CrashCommands="retrace_hello")
    add_debian_repository(server, kernel_debs().dbg)
    task, status = retrace(server, uploads["kdump"])
    log = text(server, task, "log")
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", log
    assert "Loaded the crash extension retrace_hello.so" in log, log
    assert "The crash extension broken.so was not loaded: extend: broken.so: not an ELF format object file" in log
    assert "crash extension two words.so is not loaded: its path could not be given to extend safely" in log
    assert str(extensions) not in log
    assert f"retrace_hello: kernel {vmcores.release}, 2 tasks" in text(server, task, "results/crash-retrace-hello")


def test_md5_is_computed_while_the_vmcore_streams_in_and_cleanup_stores_identical_vmcores_once(
        warm_kernels, start_server, uploads, vmcores):
    server = start_server(repository=False, kernels_from=warm_kernels, CalculateMd5="1")
    add_debian_repository(server, kernel_debs().dbg)
    twins = sorted(retrace(server, uploads["kdump"])[0][0] for _ in range(2))  # the lower task id keeps its file
    other = retrace(server, uploads["flattened"])[0][0]
    expected = hashlib.md5(vmcores.kdump.read_bytes()).hexdigest()
    for task_id in twins:
        assert (server.save_dir / task_id / "md5sum").read_text() == f"{expected}  vmcore\n"
    files = [server.save_dir / task_id / "crash" / "vmcore" for task_id in (*twins, other)]
    assert len({path.stat().st_ino for path in files}) == 3
    cleanup = subprocess.run([str(CLEANUP), "--config", str(server.config_path)], capture_output=True, text=True,
                             timeout=300)
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert f"task {twins[1]}: its vmcore is task {twins[0]}'s (md5 {expected}); stored once" in \
        cleanup.stdout + cleanup.stderr
    assert files[0].stat().st_ino == files[1].stat().st_ino and files[0].stat().st_nlink == 2
    assert files[2].stat().st_nlink == 1


def oops_ureport(console_log):
    """A kerneloops uReport of the oops on the guest's serial console, framed as satyr's koops parser frames
    one (``? `` marks an unreliable frame), as abrt-oops would post it from a machine that survived."""
    trace = console_log.split("Call Trace:", 1)[1].split("RIP: ", 1)[0]
    frames = []
    for line in trace.splitlines():
        words = line.split("] ", 1)[-1].split()
        if words and words[0] == "?":
            reliable, words = False, words[1:]
        else:
            reliable = True
        if words and "+0x" in words[0]:
            name, offsets = words[0].split("+", 1)
            offset, length = (int(part, 16) for part in offsets.split("/"))
            frames.append({"address": 0, "reliable": reliable, "function_name": name, "function_offset": offset,
                           "function_length": length})
    return {"ureport_version": 2, "os": {"name": "debian", "version": "12", "architecture": "x86_64"},
            "problem": {"type": "kerneloops", "component": "kernel", "raw_oops": trace[:2000], "frames": frames}}


def test_a_vmcore_s_oops_and_a_posted_kerneloops_of_it_share_one_bucket(warm_kernels, start_server, uploads, vmcores):
    """A Debian release served with its apt index; one machine's kernel panicked and its vmcore was retraced,
    another's survived the same oops and abrt-oops posted it."""
    kernel_server = start_server(repository=False, kernels_from=warm_kernels)
    add_debian_repository(kernel_server, kernel_debs().dbg)
    release_dir = kernel_server.repo_dir / DEBIAN_RELEASE
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "Packages", "/dev/null"], cwd=release_dir,
                           capture_output=True, check=True).stdout
    (release_dir / "Packages.xz").write_bytes(lzma.compress(index))
    task, status = retrace(kernel_server, uploads["elf"])
    assert status.headers["X-Task-Status"] == "FINISHED_SUCCESS", text(kernel_server, task, "log")
    (bucket,) = [row for row in kernel_server.get("/problems?format=json").json()["buckets"]
                 if row["full_task"] == task[0]]
    assert bucket["type"] == "kerneloops" and "Crash bucket " + bucket["bthash"] in text(kernel_server, task, "log")
    console = (vmcores.elf.parent / "serial.log").read_text(errors="replace")
    posted = kernel_server.post("/reports/new/", files={"file": (
        "ureport.json", json.dumps(oops_ureport(console)).encode(), "application/json")})
    assert posted.status_code == 202, posted.text
    answer = posted.json()
    assert (answer["bthash"], answer["result"], answer["count"]) == (bucket["bthash"], True, bucket["count"] + 1)
    assert "sysrq_handle_crash" in answer["backtrace"] and "dump_stack_lvl" in answer["backtrace"]
