"""Our TensorRT plugin library: where it is found, and whether it can be this machine's.

The check reads the file (ELF header and dynamic symbol table) rather than loading it: loading needs
TensorRT's own libraries, and a foreign library must be refused with its reason even where TensorRT is
absent.
"""

from __future__ import annotations

import os
import platform
import struct
from pathlib import Path

from ..errors import BackendError

PLUGIN_LIBRARY_ENV = "MHUNET_PLUGIN_LIB"

#: Where a CMake build of plugins/ puts the plugin library (see plugins/CMakeLists.txt).
PLUGIN_LIBRARY_CANDIDATES = (Path("build/libmhunet_plugins.so"), Path("plugins/build/libmhunet_plugins.so"))


def plugin_library() -> Path | None:
    """The built TensorRT plugin library: $MHUNET_PLUGIN_LIB, else the default CMake build folders."""
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    return next((p for p in PLUGIN_LIBRARY_CANDIDATES if p.is_file()), None)


#: ELF e_machine values, named as platform.machine() names the CPU.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 3: "x86 (32-bit)", 40: "arm (32-bit)", 21: "ppc64"}

_HOST_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}

_SHT_DYNSYM = 11


def _dynamic_symbols(blob: bytes) -> set[str]:
    """Names of the symbols a little-endian ELF64 shared library defines in its dynamic table."""
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", blob, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != _SHT_DYNSYM:
            continue
        strings = sections[link][4]
        for pos in range(offset, offset + size, entsize or 24):
            name_at, _, _, section_index = struct.unpack_from("<IBBH", blob, pos)
            if section_index:  # 0: undefined here, imported from another library
                start = strings + name_at
                names.add(blob[start : blob.index(b"\0", start)].decode(errors="replace"))
    return names


def plugin_library_problem(path: Path) -> str | None:
    """Why ``path`` cannot be this machine's plugin library (not ELF, other CPU, not ours), or None.

    Read from the file rather than by loading it: loading needs TensorRT's own libraries, and a
    foreign library must be refused with its reason even where TensorRT is absent.
    """
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if blob[:4] != b"\x7fELF":
        return "is not a shared library (no ELF header)"
    machine = _ELF_MACHINES.get(struct.unpack_from("<H", blob, 18)[0], "another CPU")
    host = _HOST_MACHINE.get(platform.machine().lower(), platform.machine().lower())
    if blob[4] != 2 or blob[5] != 1 or machine != host:  # EI_CLASS 64-bit, EI_DATA little-endian
        return f"is built for {machine if blob[4] == 2 else '32-bit ' + machine}, this machine is {host}"
    try:
        symbols = _dynamic_symbols(blob)
    except (struct.error, ValueError, IndexError):
        return "is a damaged shared library (unreadable ELF sections)"
    if "getCreators" not in symbols:
        return "is not the mhunet plugin library (it exports no getCreators)"
    return None


def require_plugin_library() -> Path:
    """The plugin library, checked to be ours and built for this CPU; BackendError says why not."""
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    lib = plugin_library()
    if lib is None and env:
        raise BackendError(
            f"${PLUGIN_LIBRARY_ENV} is {env}, which does not exist; point it at the built library"
        )
    if lib is None:
        raise BackendError(
            f"TensorRT plugin library not found; build plugins/ with CMake or set {PLUGIN_LIBRARY_ENV}"
        )
    problem = plugin_library_problem(lib)
    if problem:
        raise BackendError(f"plugin library {lib} {problem}; build plugins/ on this machine with CMake")
    return lib
