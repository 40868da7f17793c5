from retrace.release import ReleaseId, canonical_arch, supported_releases


def test_release_id_parses_distribution_version_arch():
    assert ReleaseId.parse("fedora-41-x86_64") == ReleaseId("fedora", "41", "x86_64")


def test_rawhide_and_dotted_versions_parse():
    assert ReleaseId.parse("fedora-rawhide-aarch64").version == "rawhide"
    assert ReleaseId.parse("rhel-9.4-s390x").version == "9.4"


def test_release_id_prints_back_to_its_wire_form():
    assert str(ReleaseId.parse("centos-9-ppc64le")) == "centos-9-ppc64le"


def test_malformed_release_ids_are_rejected():
    for text in ("fedora-41", "fedora_41_x86_64", "fedora-41-x86_64-extra", "../etc-41-x86_64", "", None, "Fedora-41-x86_64"):
        assert ReleaseId.parse(text) is None, text


def test_canonical_arch_folds_the_x86_and_arm_families():
    assert [canonical_arch(a) for a in ("i686", "i386", "armv7hl", "x86_64", "mips")] == [
        "i386", "i386", "armhfp", "x86_64", "mips",
    ]


def test_supported_releases_are_dirs_with_repodata(tmp_path):
    (tmp_path / "fedora-41-x86_64" / "repodata").mkdir(parents=True)
    (tmp_path / "fedora-40-x86_64" / "repodata").mkdir(parents=True)
    (tmp_path / "fedora-39-x86_64").mkdir()
    (tmp_path / "kernel" / "repodata").mkdir(parents=True)
    assert [str(r) for r in supported_releases(tmp_path)] == ["fedora-40-x86_64", "fedora-41-x86_64"]


def test_supported_releases_of_missing_repo_dir_is_empty(tmp_path):
    assert supported_releases(tmp_path / "nothing") == []
