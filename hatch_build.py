"""Builds the journal's optional C module (src/hydrallm/observe/_rowcodec.c) into the wheel.

Optional: with no C compiler (or on a platform whose Python names none), the wheel is
pure Python and hydrallm uses the same functions written in Python
(`hydrallm.observe.rowcodec`); nothing fails.  `HYDRALLM_NO_NATIVE=1` at install skips
the build.  An editable install (`pip install -e .`) builds the module next to its source,
where the editable install imports from (the file is ignored by git).

Compiled directly with the compiler and flags this Python was built with (`sysconfig`):
one C file with no dependencies needs no setuptools in the build environment."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/hydrallm/observe/_rowcodec.c")
PACKAGE_DIR = "hydrallm/observe"


def compile_module(source: Path, out_dir: Path) -> Path | None:
    """The built module's path, or None (and why, on stderr) when it could not be built."""
    ldshared = sysconfig.get_config_var("LDSHARED")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    include = sysconfig.get_paths().get("include")
    if not ldshared or not suffix or not include:
        print("hydrallm: no C compiler settings in this Python; pure Python", file=sys.stderr)
        return None
    out = out_dir / f"_rowcodec{suffix}"
    command = [
        *shlex.split(ldshared),
        "-O2",
        "-fPIC",
        f"-I{include}",
        str(source),
        "-o",
        str(out),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"hydrallm: the C module was not built ({exc}); pure Python", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(
            f"hydrallm: the C module was not built; pure Python:\n{done.stderr[-2000:]}",
            file=sys.stderr,
        )
        out.unlink(missing_ok=True)
        return None
    return out


class NativeModuleHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("HYDRALLM_NO_NATIVE"):
            return
        source = Path(self.root) / SOURCE
        if version == "editable":
            built = compile_module(source, source.parent)
            if built is None:
                return
        else:
            out_dir = Path(tempfile.mkdtemp(prefix="hydrallm-build-"))
            built = compile_module(source, out_dir)
            if built is None:
                return
            build_data["force_include"][str(built)] = f"{PACKAGE_DIR}/{built.name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
