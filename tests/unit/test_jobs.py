"""The coredump and vmcore jobs' stages, with their two boundaries faked: where gdb runs and where packages come from.

The index, the core reader, the resolution, the statuses, the task log and
the backtrace header are the real ones; the environment records what it is
asked and answers as gdb would, the supply answers from manifests written
here instead of unpacking packages.
"""

import dataclasses
import json
import lzma

import pytest

from retrace_server.arch import HOST_ARCH
from retrace_server.config import Config
from retrace_server.environments.base import Environment, View
from retrace_server.environments.choice import ENVIRONMENTS
from retrace_server.environments.sandbox import Sandboxed, SandboxTimeout
from retrace_server.intake.overrides import Overrides
from retrace_server.packaging.cache import MANIFEST, CachedPackage
from retrace_server.packaging.kernel import KernelCache, KernelError
from retrace_server.packaging.supply import PackageUnavailable
from retrace_server.tasks.task import IncomingTask, TaskStatus, TaskType
from retrace_server.worker.cli import task_logger
from retrace_server.worker.coredump import RetraceJob
from retrace_server.worker.vmcore import VmcoreJob
from testkit.debian import flat_apt_index
from testkit.synthetic_core import BUILD_ID, synthetic_core
from tests.unit.test_vmcore import BUILD_ID as VMCORE_BUILD_ID
from tests.unit.test_vmcore import kdump_image

BUILD_ID_HEX = BUILD_ID.hex()
PACKAGES = f"""Package: crasher
Source: crasher
Version: 1.0-1
Architecture: amd64
Filename: pool/main/c/crasher/crasher_1.0-1_amd64.deb
Size: 1000
SHA256: {"a" * 64}

Package: crasher-dbgsym
Source: crasher
Version: 1.0-1
Architecture: amd64
Build-Ids: {BUILD_ID_HEX}
Filename: pool/main/c/crasher/crasher-dbgsym_1.0-1_amd64.deb
Size: 2000
SHA256: {"b" * 64}
"""
CONTENTS = f"""usr/bin/crasher                                          devel/crasher
usr/lib/debug/.build-id/{BUILD_ID_HEX[:2]}/{BUILD_ID_HEX[2:]}.debug  debug/crasher-dbgsym
"""
GDB_SAYS = """Thread 1 (LWP 4242):
#0  0x0000000000401136 in crash_here (depth=0) at crasher.c:5
#1  0x0000000000401160 in main () at crasher.c:12
"""


class FakeEnvironment(Environment):
    """Records what the job asks; answers as gdb would, or fails as told."""

    name = "fake"

    def __init__(self, *args, fails_with=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fails_with = fails_with
        self.prepared = None
        self.argv = None
        self.cleaned = []

    def prepare(self, work):
        self.prepared = work
        return len(work.trees)

    def view(self, work):
        return View(sysroot="/sysroot", core="/sysroot/core", gdb=work.debugger)

    def run(self, argv, work, limits):
        self.argv = list(argv)
        if self.fails_with is not None:
            raise self.fails_with
        marker = next(arg for arg in argv if arg.startswith("echo == EXPLOITABLE")).removeprefix("echo ")[:-2]
        return Sandboxed(0, f"{GDB_SAYS}{marker}\n=> 0x401136 <crash_here+4>:\tmovl   $0x0,(%rax)\n", 0.01)

    def clean(self, keep):
        self.cleaned.append(keep)


class FakeSupply:
    """Packages as if unpacked: a manifest per package, the binary's file carrying the core's build-id."""

    def __init__(self, root, unavailable=None):
        self.root, self.unavailable = root, unavailable
        self.downloaded, self.verified, self.forgotten = [], [], 0

    def cached(self, package, index):
        entry = self.root / package.name
        if not entry.is_dir():
            files = {"crasher": [["usr/bin/crasher", "f", "", BUILD_ID_HEX]],
                     "crasher-dbgsym": [[f"usr/lib/debug/.build-id/{BUILD_ID_HEX[:2]}/{BUILD_ID_HEX[2:]}.debug",
                                         "f", "", BUILD_ID_HEX]]}[package.name]
            entry.mkdir(parents=True)
            (entry / MANIFEST).write_text(json.dumps(files))
        return CachedPackage(entry, unpacked=False, seconds=0.0, waited=False)

    def cached_all(self, packages, index):
        return [self.cached(package, index) for package in packages]

    def download_missing(self, index, packages):
        if self.unavailable:
            raise PackageUnavailable(self.unavailable, "repository error")
        self.downloaded += [package.nevra for package in packages]

    def verify_signatures(self, index, packages):
        self.verified += [package.nevra for package in packages]

    def forget_downloads(self):
        self.forgotten += 1


@pytest.fixture
def config(tmp_path):
    flat_apt_index(tmp_path / "repos" / "debian-12-x86_64", PACKAGES, CONTENTS)
    (tmp_path / "spool").mkdir()
    return Config(SaveDir=tmp_path / "spool", RepoDir=tmp_path / "repos", CacheDir=tmp_path / "cache",
                  LogDir=tmp_path / "log", HookConfig=tmp_path / "no-hooks.conf", RetraceArchitectures=HOST_ARCH)


def spooled_task(config, task_type=TaskType.COREDUMP, **crash_files):
    files = {"coredump": synthetic_core(), "executable": b"/usr/bin/crasher", "package": b"crasher-1.0-1",
             "os_info": b"ID=debian\nVERSION_ID=\"12\"\n", **crash_files}
    with IncomingTask(config.SaveDir) as incoming:
        for name, data in files.items():
            if data is not None:
                (incoming.crash_dir / name).write_bytes(data)
        task, _ = incoming.commit(task_type, id_length=9, password_length=22)
    return task


def run_job(config, task, environment_kwargs=None, supply=None, environment_class=FakeEnvironment):
    log = task_logger(task, verbose=False)
    environment = environment_class(config, task.path, task.task_id, log, **(environment_kwargs or {}))
    supply = supply or FakeSupply(config.CacheDir / "fake-packages")
    job = RetraceJob(config, task, log, supply=supply, environment=environment)
    try:
        return job.run(), environment, supply
    finally:
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)


@pytest.mark.skipif(HOST_ARCH != "x86_64", reason="the synthetic core is an x86_64 one")
class TestCoredumpJob:
    def test_a_resolved_crash_hands_the_environment_its_packages_and_writes_gdbs_backtrace(self, config):
        task = spooled_task(config)
        succeeded, environment, supply = run_job(config, task)
        assert succeeded, task.path.joinpath("retrace_log").read_text()
        assert task.status is TaskStatus.SUCCESS
        work = environment.prepared
        assert (work.executable, str(work.release)) == ("/usr/bin/crasher", "debian-12-x86_64")
        assert work.packages == ["crasher_1.0-1_amd64", "crasher-dbgsym_1.0-1_amd64"]
        assert sorted(tree.path.name for tree in work.trees) == ["crasher", "crasher-dbgsym"]
        assert supply.downloaded == supply.verified == work.packages
        assert "file /sysroot/usr/bin/crasher" in environment.argv and "core-file /sysroot/core" in environment.argv
        backtrace = task.path.joinpath("retrace_backtrace").read_text()
        assert backtrace.startswith("Files given to gdb (binary; debuginfo):\n"
                                    "  /usr/bin/crasher: crasher_1.0-1_amd64; crasher-dbgsym_1.0-1_amd64\n")
        assert "#0  0x0000000000401136 in crash_here (depth=0) at crasher.c:5" in backtrace
        assert "EXPLOITABLE" not in backtrace
        assert task.results_dir.joinpath("exploitable").is_file()
        assert environment.cleaned == [False] and supply.forgotten == 1
        assert not task.crash_dir.exists(), "a coredump task's crash data goes when it ends"

    def test_the_stages_are_logged_in_upstreams_order(self, config):
        task = spooled_task(config)
        run_job(config, task)
        log = task.path.joinpath("retrace_log").read_text()
        stages = [status.sentence for status in (TaskStatus.ANALYZE, TaskStatus.INIT, TaskStatus.BACKTRACE,
                                                 TaskStatus.CLEANUP, TaskStatus.STATS)]
        positions = [log.index(f"{sentence}: done in") for sentence in stages]
        assert positions == sorted(positions)

    def test_the_parts_of_a_stage_are_timed_into_the_statistics_that_metrics_shows(self, config):
        from retrace_server.stats import StatsDB

        run_job(config, spooled_task(config))
        with StatsDB.for_config(config) as stats:
            phases = set(stats.phase_samples())
        assert {"analyze", "init", "init.packages", "init.environment", "backtrace", "backtrace.gdb",
                "stats.buckets", "cleanup"} <= phases, phases

    def test_the_answer_comes_first_then_cleaning_and_counting(self, config):
        seen = []

        class Watching(FakeEnvironment):
            def clean(self, keep):
                seen.append(task.status)
                super().clean(keep)

        task = spooled_task(config)
        succeeded, _, _ = run_job(config, task, environment_class=Watching)
        assert succeeded and seen == [TaskStatus.SUCCESS], "FINISHED_SUCCESS before the sysroot is removed"
        log = task.path.joinpath("retrace_log").read_text()
        assert log.index("Retrace job finished successfully") < log.index("Saving crash statistics: done")
        assert "After the answer: cleaned and counted in" in log.splitlines()[-1]

    def test_a_failure_after_the_answer_is_logged_and_leaves_the_answer(self, config):
        class Broken(FakeEnvironment):
            def clean(self, keep):
                raise OSError("the sysroot is busy")

        task = spooled_task(config)
        succeeded, _, _ = run_job(config, task, environment_class=Broken)
        assert succeeded and task.status is TaskStatus.SUCCESS
        log = task.path.joinpath("retrace_log").read_text()
        assert "After the answer, cleaning or counting failed (OSError); the retrace stands" in log

    def test_a_package_the_supply_cannot_give_fails_the_task_with_its_sentence_and_cleans_up(self, config):
        task = spooled_task(config)
        supply = FakeSupply(config.CacheDir / "fake-packages", unavailable="crasher_1.0-1_amd64 is gone")
        succeeded, environment, _ = run_job(config, task, supply=supply)
        assert not succeeded
        assert task.status is TaskStatus.FAIL
        assert "crasher_1.0-1_amd64 is gone" in task.path.joinpath("retrace_log").read_text()
        assert environment.prepared is None and environment.argv is None
        assert environment.cleaned == [False]
        assert not task.crash_dir.exists()

    def test_gdb_past_its_timeout_fails_the_task_saying_which_limit(self, config):
        task = spooled_task(config)
        succeeded, environment, _ = run_job(config, task, {"fails_with": SandboxTimeout()})
        assert not succeeded
        assert "gdb did not finish within" in task.path.joinpath("retrace_log").read_text()
        assert environment.cleaned == [False]

    def test_an_environment_that_installs_from_an_rpm_mirror_refuses_an_apt_release(self, config):
        class NeedsRpmMirror(FakeEnvironment):
            needs_full_rpm_mirror = True

        task = spooled_task(config)
        succeeded, environment, _ = run_job(config, task, environment_class=NeedsRpmMirror)
        assert not succeeded
        log = task.path.joinpath("retrace_log").read_text()
        assert ("RetraceEnvironment = fake installs gdb from a full RPM mirror of debian-12-x86_64, and this server "
                "serves that release as an apt repository") in log
        assert environment.prepared is None

    def test_a_debug_task_keeps_its_environment_and_crash_data(self, config):
        task = spooled_task(config, TaskType.DEBUG)
        succeeded, environment, _ = run_job(config, task)
        assert succeeded
        assert environment.cleaned == [True]
        assert task.crash_dir.joinpath("coredump").is_file()

    def test_a_release_the_server_does_not_serve_is_named_with_those_it_does(self, config):
        task = spooled_task(config, os_info=b"ID=debian\nVERSION_ID=\"11\"\n")
        succeeded, environment, _ = run_job(config, task)
        assert not succeeded
        assert "it supports: debian-12-x86_64" in task.path.joinpath("retrace_log").read_text()
        assert environment.prepared is None

    def test_an_executable_the_core_does_not_map_is_bad_crash_data(self, config):
        task = spooled_task(config, executable=b"/usr/bin/other")
        succeeded, _, _ = run_job(config, task)
        assert not succeeded
        assert ("the coredump does not map the executable /usr/bin/other"
                in task.path.joinpath("retrace_log").read_text())

    def test_a_binary_whose_build_id_differs_is_not_given_to_gdb(self, config):
        class OtherBuild(FakeSupply):
            def cached(self, package, index):
                entry = super().cached(package, index)
                (entry.path / MANIFEST).write_text(json.dumps([["usr/bin/crasher", "f", "", "00" * 20]]))
                return entry

        task = spooled_task(config)
        (config.RepoDir / "debian-12-x86_64" / "Packages.xz").write_bytes(
            lzma.compress(PACKAGES.split("\n\n")[0].encode() + b"\n"))
        succeeded, environment, _ = run_job(config, task, supply=OtherBuild(config.CacheDir / "fake-packages"))
        assert not succeeded
        log = task.path.joinpath("retrace_log").read_text()
        assert "no package of debian-12-x86_64 provides the crashing executable /usr/bin/crasher" in log
        assert "none with this build-id" in log
        assert environment.argv is None

    def test_a_crash_whose_program_no_source_has_and_no_library_either_fails_naming_the_build(self, config):
        """Its debuginfo alone gives gdb nothing to unwind with (a partial backtrace needs some library)."""
        task = spooled_task(config, dso_list=b"/usr/bin/crasher crasher-1.0-1.amd64 (Debian) 1700000000\n")
        (config.RepoDir / "debian-12-x86_64" / "Packages.xz").write_bytes(
            lzma.compress(PACKAGES.split("\n\n")[1].encode()))
        succeeded, environment, _ = run_job(config, task)
        assert not succeeded and environment.argv is None
        log = task.path.joinpath("retrace_log").read_text()
        assert (f"no package of debian-12-x86_64 provides the crashing executable /usr/bin/crasher (build-id "
                f"{BUILD_ID_HEX}: no binary package (debuginfo is in crasher-dbgsym_1.0-1_amd64)" in log), log
        assert "dso_list names the packages of 1 mapped files" in log

    def test_the_overrides_of_a_restart_are_logged_and_applied(self, config):
        task = spooled_task(config, os_info=b"ID=debian\nVERSION_ID=\"11\"\n")
        Overrides(release="debian-12-x86_64").save(task)
        succeeded, environment, _ = run_job(config, task)
        assert succeeded
        assert "Forced by an administrator: release debian-12-x86_64" in task.path.joinpath("retrace_log").read_text()
        assert str(environment.prepared.release) == "debian-12-x86_64"


def test_every_environment_the_config_accepts_is_in_the_table():
    field = next(field for field in dataclasses.fields(Config) if field.name == "RetraceEnvironment")
    assert set(ENVIRONMENTS) == set(field.metadata["choices"])



class TestVmcoreJob:
    """The stages before crash runs: which kernel, which releases, which vmlinux."""

    @pytest.fixture
    def job(self, config):
        task = spooled_task(config, TaskType.VMCORE, coredump=None)
        task.crash_dir.joinpath("vmcore").write_bytes(kdump_image())
        log = task_logger(task, verbose=False)
        yield VmcoreJob(config, task, log)
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)

    def test_a_forced_kernel_release_wins_over_the_dumps_and_keeps_its_build_id(self, job):
        Overrides(kernelver="6.1.0-57-cloud-amd64").save(job.task)
        job.overrides = Overrides.load(job.task)
        dump = job.analyze()
        assert (dump.kernel_release, dump.arch, dump.kernel.build_id) == ("6.1.0-57-cloud-amd64", "x86_64",
                                                                          VMCORE_BUILD_ID)
        assert job.task.path.joinpath("kernelver").read_text() == "6.1.0-57-cloud-amd64"
        assert [str(release) for release in dump.releases] == ["debian-12-x86_64"]
        log = job.task.path.joinpath("retrace_log").read_text()
        assert "says kernel 6.1.0-56-cloud-amd64; using 6.1.0-57-cloud-amd64 as forced" in log

    def test_no_vmlinux_anywhere_fails_naming_what_was_searched_and_where(self, job):
        Overrides(kernelver="6.1.0-56-cloud-amd64").save(job.task)
        job.overrides = Overrides.load(job.task)
        dump = job.analyze()
        with pytest.raises(KernelError, match=r"no vmlinux for kernel 6\.1\.0-56-cloud-amd64 \(build-id "
                                              f"{VMCORE_BUILD_ID}\\): .* is in none of debian-12-x86_64, and no "
                                              "debuginfod server is configured"):
            job.prepare(dump)

    def test_a_vmlinux_in_the_kernel_cache_is_reused_without_a_package(self, job, config):
        Overrides(kernelver="6.1.0-56-cloud-amd64").save(job.task)
        job.overrides = Overrides.load(job.task)
        kernels = KernelCache(config.CacheDir)
        key = kernels.key(VMCORE_BUILD_ID, "6.1.0-56-cloud-amd64")
        kernels.get(key, lambda vmlinux: vmlinux.write_bytes(b"a vmlinux"))
        dump = job.analyze()
        job.prepare(dump)
        assert dump.vmlinux == kernels.cached(key) and dump.cache_key == key
        assert "Reused the vmlinux of 6.1.0-56-cloud-amd64 from the kernel cache" in (
            job.task.path.joinpath("retrace_log").read_text())


@pytest.mark.skipif(HOST_ARCH != "x86_64", reason="the synthetic core is an x86_64 one")
def test_an_executable_named_by_its_unmerged_path_is_the_file_the_core_maps(config):
    """dpkg's database and users say /bin/crasher where the kernel wrote /usr/bin/crasher (merged /usr)."""
    task = spooled_task(config, executable=b"/bin/crasher")
    succeeded, environment, _ = run_job(config, task)
    assert succeeded, task.path.joinpath("retrace_log").read_text()
    assert environment.prepared.executable == "/usr/bin/crasher"
    assert ("The core maps the executable /bin/crasher as /usr/bin/crasher (merged /usr)"
            in task.path.joinpath("retrace_log").read_text())
