"""bigapp: a large application, as issue 34 measured one, built by rpmbuild for the benchmarks.

A program and LIBRARIES shared libraries, each library its own package
with its own ``-debuginfo`` (find-debuginfo with ``-i``: the debug files
carry a ``.gdb_index``, as Fedora's do), so a crash needs 2 * (LIBRARIES +
1) packages.  Each library has FUNCTIONS functions (debuginfo of a real
library's size); its entry calls through three of them into the next
library, and the last one crashes, so the backtrace crosses every library.
The program first fills HEAP_MIB of heap with data that compresses like
data, so the core is a real application's size.
"""

import concurrent.futures
import subprocess
from pathlib import Path

from testkit.distro import _DEBUGINFO_DEFINES
from testkit.signing import TEST_KEY

LIBRARIES = 40
FUNCTIONS = 300
HEAP_MIB = 80
PROGRAM = "/usr/bin/bigapp"
PACKAGE = "bigapp-1.0-1.fc41"


def _library_source(number):
    """FUNCTIONS functions with locals and loops; f0 -> f1 -> f2 -> the next library's entry (three frames
    per library on the stack), the others debuginfo only; the last library's f2 writes to NULL."""
    last = number + 1 == LIBRARIES
    parts = [] if last else [f"int app{number + 1}_entry(int x);\n"]
    parts += [f"__attribute__((noinline)) int app{number}_f{i}(int x);\n" for i in range(FUNCTIONS)]
    for i in range(FUNCTIONS):
        if i < 2:
            step = f"local_{i} += app{number}_f{i + 1}(x + {i});"
        elif i == 2:
            step = "*(volatile int *)0 = x;" if last else f"local_{i} += app{number + 1}_entry(x + 1);"
        else:
            step = f"local_{i} ^= x + {i};"
        parts.append(
            f"__attribute__((noinline)) int app{number}_f{i}(int x)\n{{\n    int local_{i} = x * {i + 3};\n"
            f"    for (int k = 0; k < (x & 3); k++) local_{i} += k ^ {i};\n"
            f"    if (x >= 0) {{ {step} }}\n    return local_{i};\n}}\n")
    parts.append(f"int app{number}_entry(int x) {{ return app{number}_f0(x); }}\n")
    return "".join(parts)


_MAIN = f"""#include <stdlib.h>
#define HEAP_BYTES ({HEAP_MIB} << 20)
int app0_entry(int x);
unsigned *volatile heap;
int main(void)
{{
    heap = malloc(HEAP_BYTES);
    unsigned state = 12345u;
    for (size_t i = 0; i < HEAP_BYTES / sizeof *heap; i++) {{
        state = state * 1103515245u + 12345u;
        heap[i] = (i % 4 == 0) ? state : (unsigned)i;
    }}
    return app0_entry(1);
}}
"""

_SPEC = """Name:           {name}
Version:        1.0
Release:        1%{{?dist}}
Summary:        {summary} (retrace-server benchmark)
License:        MIT

%description
{summary}.

%debug_package

%build
gcc -g -O1 {flags} -Wl,--build-id -o {output} %{{_sourcedir}}/{source} -L%{{linkdir}} {links}

%install
install -D -m 0755 {output} %{{buildroot}}{installed}

%files
{installed}
"""


def _spec(number):
    """(name, spec text) of library ``number``, or of the program for None."""
    if number is None:
        links = " ".join(f"-l:libapp{n}.so.1" for n in range(LIBRARIES))
        return "bigapp", _SPEC.format(name="bigapp", summary="A program crashing through forty libraries",
                                      flags="", output="bigapp", source="main.c", links=links,
                                      installed=PROGRAM)
    links = "" if number + 1 == LIBRARIES else f"-l:libapp{number + 1}.so.1"
    return f"libapp{number}", _SPEC.format(
        name=f"libapp{number}", summary=f"Library {number} of bigapp",
        flags=f"-fPIC -shared -Wl,-soname,libapp{number}.so.1", output=f"libapp{number}.so.1",
        source=f"libapp{number}.c", links=links, installed=f"%{{_libdir}}/libapp{number}.so.1")


def build_bigapp(work_dir, key=TEST_KEY):
    """The .rpm paths of bigapp's packages (signed with ``key``), built under ``work_dir``: the sources and
    the libraries to link against first, then one rpmbuild per package, two at a time."""
    work_dir = Path(work_dir)
    sources, link = work_dir / "sources", work_dir / "link"
    sources.mkdir(parents=True)
    link.mkdir()
    (sources / "main.c").write_text(_MAIN)
    for number in range(LIBRARIES):
        (sources / f"libapp{number}.c").write_text(_library_source(number))
        subprocess.run(["gcc", "-O0", "-fPIC", "-shared", f"-Wl,-soname,libapp{number}.so.1", "-o",
                        str(link / f"libapp{number}.so.1"), str(sources / f"libapp{number}.c")], check=True)

    def rpmbuild(number):
        name, text = _spec(number)
        top = work_dir / "rpmbuild" / name
        top.mkdir(parents=True)
        (top / f"{name}.spec").write_text(text)
        result = subprocess.run(
            ["rpmbuild", "-bb", str(top / f"{name}.spec"), "--define", f"_topdir {top}", "--define",
             f"_sourcedir {sources}", "--define", f"linkdir {link}", "--define", "dist .fc41",
             *_DEBUGINFO_DEFINES, "--define", "_find_debuginfo_opts -i", "--nodeps"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"rpmbuild {name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return sorted((top / "RPMS").rglob("*.rpm"))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rpms = [rpm for built in pool.map(rpmbuild, [*range(LIBRARIES), None]) for rpm in built]
    return key.sign(rpms) if key is not None else rpms
