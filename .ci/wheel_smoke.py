"""Build the wheel, install it with the server and llm extras in a clean venv, and use it.

The tests import the working tree (through the link tree `make install` puts on the venv's
path), so a package or data file missing from the wheel would pass them. This installs the
wheel alone, then checks from outside the repository that every file of the packaged folders
is installed, imports every module of maira_sae (walking the installed package), and runs
``maira-sae --help`` and ``maira-sae-server --help``. Exits non-zero, naming what failed.

    python .ci/wheel_smoke.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run by the clean venv's python, from a folder outside the repository.
_CHECK = """
import importlib, json, pkgutil, sys
from pathlib import Path
import maira_sae
installed = Path(maira_sae.__file__).parent
missing = [name for name in json.loads(sys.argv[1]) if not (installed / name).is_file()]
if missing:
    sys.exit(f"the wheel lacks {len(missing)} file(s): {missing}")
modules = ["maira_sae"] + [m.name for m in pkgutil.walk_packages(maira_sae.__path__, "maira_sae.")]
for name in modules:
    importlib.import_module(name)
print(f"{len(modules)} modules imported from {installed}")
"""


def packaged_files() -> list[str]:
    """Every file git keeps (or would) under the folders package-dir maps, as its path inside
    the installed maira_sae."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    files = []
    for package, folder in mapping.items():
        inside = Path(*package.split(".")[1:])
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", folder],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        files += [(inside / Path(name).relative_to(folder)).as_posix() for name in listed]
    return sorted(set(files))


def run(command: list[str | Path], cwd: Path) -> None:
    shown = [str(part) if len(str(part)) < 80 else "..." for part in command]
    print("+", " ".join(shown), flush=True)
    subprocess.run([str(part) for part in command], cwd=cwd, check=True)


def smoke(work: Path) -> None:
    dist = work / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, ROOT], cwd=work)
    (wheel,) = dist.glob("maira_sae-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=work)
    # The server extra pins torch exactly, so this takes the CPU wheel, never a CUDA build.
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[server,llm]"], cwd=work)
    run([venv / "bin" / "python", "-c", _CHECK, json.dumps(packaged_files())], cwd=work)
    for command in ("maira-sae", "maira-sae-server"):
        run([venv / "bin" / command, "--help"], cwd=work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="build and install here, and keep it")
    args = parser.parse_args(argv)
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            smoke(args.keep.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="maira-sae-wheel-") as work:
                smoke(Path(work))
    except subprocess.CalledProcessError as error:
        print(f"wheel smoke test FAILED: the last step exited {error.returncode}", file=sys.stderr)
        return 1
    print("wheel smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
