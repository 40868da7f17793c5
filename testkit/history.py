"""History sources on loopback, laid out by their documented URL schemes, holding real builds.

``SnapshotServer`` answers Debian snapshot's machine-readable API for the
.debs it is given (``/mr/binary/<name>/``, ``/mr/binary/<name>/<version>/
binfiles?fileinfo=1``, ``/mr/package/<source>/<version>/binpackages``,
``/file/<sha1>``), the fields read from each package's own control file.
``koji_tree`` lays RPMs out as a Koji package tree (``packages/<source>/
<version>/<release>/<arch>/``), served by ``testkit.loopback.FileServer``.
"""

import hashlib
import http.server
import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from testkit.loopback import _ThreadedHTTP


def deb_fields(deb):
    """``{Package, Version, Architecture, Source, SourceVersion}`` of a .deb, from its control file."""
    said = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture", "Source"],
                          capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in said.splitlines() if ": " in line)
    source = fields.get("Source", fields["Package"])
    name, _, version = source.partition(" ")
    fields["Source"], fields["SourceVersion"] = name, version.strip("()") or fields["Version"]
    return fields


class SnapshotServer(_ThreadedHTTP):
    """Debian snapshot's API over ``debs``; ``substitutes`` ``{(name, version): deb}`` serves another
    package's file (with its true SHA1) under a name and version: a history source that lies."""

    def __init__(self, debs, substitutes=None):
        self.requests = []
        self.binaries, self.files, self.sources = {}, {}, {}
        for deb in debs:
            self._add(deb, deb_fields(deb))
        for (name, version), deb in (substitutes or {}).items():
            fields = {**deb_fields(deb), "Package": name, "Version": version}
            self._add(deb, fields, replace=True)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                outer.requests.append(self.path)

            def do_GET(self):
                status, body, kind = outer.answer(urlsplit(self.path).path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._serve(Handler)

    def _add(self, deb, fields, replace=False):
        sha1 = hashlib.sha1(deb.read_bytes()).hexdigest()
        self.files[sha1] = deb
        versions = self.binaries.setdefault(fields["Package"], {})
        if replace:
            versions.pop(fields["Version"], None)
        versions.setdefault(fields["Version"], (fields, []))[1].append(
            {"architecture": fields["Architecture"], "hash": sha1, "name": deb.name, "size": deb.stat().st_size})
        self.sources.setdefault((fields["Source"], fields["SourceVersion"]), set()).add(
            (fields["Package"], fields["Version"]))

    def answer(self, path):
        """``(status, body, content type)`` for a GET of ``path``."""
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if parts[:1] == ["file"] and len(parts) == 2 and parts[1] in self.files:
            return 200, self.files[parts[1]].read_bytes(), "application/octet-stream"
        if parts[:2] == ["mr", "binary"] and len(parts) == 3 and parts[2] in self.binaries:
            return self._json({"binary": parts[2], "result": [
                {"binary_version": version, "name": parts[2], "source": fields["Source"],
                 "version": fields["SourceVersion"]} for version, (fields, _) in self.binaries[parts[2]].items()]})
        if parts[:2] == ["mr", "binary"] and len(parts) == 5 and parts[4] == "binfiles":
            _, files = self.binaries.get(parts[2], {}).get(parts[3], (None, None))
            if files:
                return self._json({
                    "binary": parts[2], "binary_version": parts[3],
                    "result": [{"architecture": entry["architecture"], "hash": entry["hash"]} for entry in files],
                    "fileinfo": {entry["hash"]: [{"archive_name": "debian", "name": entry["name"],
                                                  "path": f"/pool/main/{parts[2][0]}/{parts[2]}",
                                                  "size": entry["size"], "first_seen": "20260101T000000Z"}]
                                 for entry in files}})
        if parts[:2] == ["mr", "package"] and len(parts) == 5 and parts[4] == "binpackages":
            binaries = self.sources.get((parts[2], parts[3]))
            if binaries:
                return self._json({"package": parts[2], "version": parts[3], "result": [
                    {"name": name, "version": version} for name, version in sorted(binaries)]})
        return 404, b"Not found\n", "text/plain"

    @staticmethod
    def _json(document):
        return 200, json.dumps(document).encode(), "application/json"


def koji_tree(directory, rpms):
    """``rpms`` laid out as Koji lays out builds: by source package, version, release and architecture."""
    for rpm in rpms:
        said = subprocess.run(["rpm", "-qp", "--qf", "%{SOURCERPM} %{VERSION} %{RELEASE} %{ARCH}", str(rpm)],
                              capture_output=True, text=True, check=True).stdout.split()
        source_rpm, version, release, arch = said
        place = Path(directory) / "packages" / source_rpm.rsplit("-", 2)[0] / version / release / arch
        place.mkdir(parents=True, exist_ok=True)
        shutil.copy(rpm, place / rpm.name)
    return Path(directory)
