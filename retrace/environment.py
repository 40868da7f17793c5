"""A task's sysroot: the crashed machine's files, assembled from the cache.

The root is a tree of directories and symlinks (``RetraceEnvironment =
sysroot``): a regular file is a symlink to its copy in the package cache,
so assembling a root costs one ``symlink`` per file and no data is copied.
The package's own symlinks are recreated inside the root, with absolute
targets made relative, so they resolve among the task's packages and never
to the host's files.
"""

import os
import time
from pathlib import Path


def _relative_link_target(relative, target):
    if not target.startswith("/"):
        return target
    return os.path.relpath("/" + target.lstrip("/"), "/" + os.path.dirname(relative))


def assemble_sysroot(root, cached_packages):
    """Build ``root`` from CachedPackages (the first package wins a file both hold).

    Returns ``(files linked, seconds)``.
    """
    started = time.monotonic()
    root = Path(root)
    root.mkdir(mode=0o755)
    made_dirs = set()
    linked = 0
    for package in cached_packages:
        source_root = str(package.root)
        for relative, kind, link_target, _build_id in package.manifest():
            destination = os.path.join(root, relative)
            if kind == "d":
                if relative not in made_dirs:
                    os.makedirs(destination, exist_ok=True)
                    made_dirs.add(relative)
                continue
            parent = os.path.dirname(relative)
            if parent and parent not in made_dirs:
                os.makedirs(os.path.join(root, parent), exist_ok=True)
                made_dirs.add(parent)
            target = os.path.join(source_root, relative) if kind == "f" else _relative_link_target(relative, link_target)
            try:
                os.symlink(target, destination)
            except FileExistsError:
                continue
            linked += 1
    return linked, time.monotonic() - started
