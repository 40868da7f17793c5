"""Tar archives from untrusted hands, read as streams, with the limits Python's tarfile lacks.

tarfile reads an extended header (pax, GNU long name or link) into memory
whole, whatever size it declares, and reads the header that follows it
recursively, so thousands of them in a row end in a RecursionError.  Crash
archives and packages need neither: a path fits in a few hundred bytes.  The
count of headers in a row is kept on the archive being read (never on the
thread), so one truncated archive cannot leave its count to the next.
"""

from __future__ import annotations

import tarfile
from typing import Callable

MAX_METADATA_SIZE = 64 * 1024
MAX_METADATA_CHAIN = 8
_METADATA_TYPES = {
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
}
_CHAIN_ATTRIBUTE = "_retrace_metadata_chain"


def guarded_tarinfo(refuse: Callable[[str], Exception]) -> type[tarfile.TarInfo]:
    """A TarInfo class for ``tarfile.open(..., tarinfo=...)`` that raises ``refuse(what is wrong)`` for an
    extended header over MAX_METADATA_SIZE or more than MAX_METADATA_CHAIN of them in a row."""

    class GuardedTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> GuardedTarInfo:
            # tarfile's own fromtarfile, with the checks between reading a header and reading what it
            # announces (the size of an extended header's data, the next header).
            buf = tarfile_.fileobj.read(tarfile.BLOCKSIZE)
            info = cls.frombuf(buf, tarfile_.encoding, tarfile_.errors)
            info.offset = tarfile_.fileobj.tell() - tarfile.BLOCKSIZE
            if info.type in _METADATA_TYPES:
                if info.size > MAX_METADATA_SIZE:
                    raise refuse(f"an extended header larger than {MAX_METADATA_SIZE // 1024} KiB")
                chain = getattr(tarfile_, _CHAIN_ATTRIBUTE, 0) + 1
                if chain > MAX_METADATA_CHAIN:
                    raise refuse(f"more than {MAX_METADATA_CHAIN} extended headers in a row")
                setattr(tarfile_, _CHAIN_ATTRIBUTE, chain)
            else:
                setattr(tarfile_, _CHAIN_ATTRIBUTE, 0)
            return info._proc_member(tarfile_)  # type: ignore[attr-defined,no-any-return]

    return GuardedTarInfo
