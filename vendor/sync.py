#!/usr/bin/env python3
"""Obtain the pinned sd.cpp source and apply pysdcpp's patches to it.

The upstream tree is never committed.  `vendor/stable-diffusion.cpp` is filled
from the PyPI sdist pinned in `vendor/sdcpp.lock` (hash-checked), then every
`vendor/patches/*.patch` is applied in order with `git apply`.

Commands
  python vendor/sync.py [ensure]   make the tree match the lock and the patches (the build runs this)
  python vendor/sync.py dev        turn the tree into a git repo, one commit per patch, to edit them
  python vendor/sync.py export     write the dev repo's commits back to vendor/patches/ (format-patch)

Where the source comes from
  PYSDCPP_SDCPP_SOURCE=<file.tar.gz>  a local copy of the pinned sdist (hash-checked)
  PYSDCPP_SDCPP_SOURCE=<directory>    an extracted sdist or an sd.cpp tree (taken as is, not hashed)
  otherwise                           `pip download` of the pinned sdist, by name, with --require-hashes

Idempotent: a stamp file records the sdist hash and the patches applied; a tree
whose stamp matches is left alone.  A patch that neither applies nor is already
applied stops with an error naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "vendor" / "sdcpp.lock"
PATCHES = ROOT / "vendor" / "patches"
STAMP_NAME = ".pysdcpp-stamp.json"
SOURCE_ENV = "PYSDCPP_SDCPP_SOURCE"
# Stable flags so that regenerating the patches gives the same bytes.
FORMAT_PATCH_FLAGS = ["--zero-commit", "--no-signature", "--no-numbered", "--full-index",
                      "--no-stat", "--abbrev=12"]
GIT_ID = ["-c", "user.name=pysdcpp", "-c", "user.email=pysdcpp@localhost",
          "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"]


class SyncError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"pysdcpp-sync: {msg}", file=sys.stderr, flush=True)


def read_lock() -> dict:
    lock = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            lock[key.strip()] = value.strip()
    return lock


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def patch_files() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def wanted_stamp(lock: dict) -> dict:
    return {
        "sdist": f"{lock['package']}=={lock['version']}",
        "sha256": lock["sha256"],
        "patches": [[p.name, sha256_file(p)] for p in patch_files()],
    }


def git(args: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Never let git discover the enclosing pysdcpp repository from inside the tree.
    env["GIT_CEILING_DIRECTORIES"] = str(cwd.parent)
    return subprocess.run(["git", *GIT_ID, *args], cwd=cwd, env=env, check=check,
                          capture_output=True, text=True, **kw)


def fetch_sdist(lock: dict, dest: Path) -> Path:
    """pip-download the pinned sdist by name; pip verifies the hash (--require-hashes)."""
    req = dest / "requirements.txt"
    req.write_text(f"{lock['package']}=={lock['version']} --hash=sha256:{lock['sha256']}\n")
    # pip is a build requirement (pyproject.toml), so `python -m pip` works in an isolated
    # build environment too; a pip executable on PATH is the fallback.
    has_pip = subprocess.run([sys.executable, "-c", "import pip"], capture_output=True).returncode == 0
    pip = [sys.executable, "-m", "pip"] if has_pip or not shutil.which("pip3") else [shutil.which("pip3")]
    cmd = [*pip, "download", "--no-deps", "--no-binary=:all:",
           "--require-hashes", "--no-build-isolation", "--disable-pip-version-check",
           "-d", str(dest), "-r", str(req)]
    log("fetching " + " ".join(cmd[len(pip):]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("*.tar.gz"))
    if not found:
        raise SyncError(
            f"could not download {lock['package']}=={lock['version']} with pip:\n"
            f"{proc.stdout}\n{proc.stderr}\n"
            f"Offline? Point {SOURCE_ENV} at a local copy of the sdist.")
    return found[0]


def extract_sdist(sdist: Path, lock: dict, dest: Path) -> Path:
    digest = sha256_file(sdist)
    if digest != lock["sha256"]:
        raise SyncError(f"{sdist}: sha256 {digest} does not match the pinned {lock['sha256']}")
    prefix = f"{lock['package'].replace('-', '_')}-{lock['version']}/{lock['folder']}/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise SyncError(f"{sdist} has no folder {prefix}")
        for m in members:
            m.name = m.name[len(prefix):]
        members = [m for m in members if m.name]
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)
    return dest


def source_tree(lock: dict, scratch: Path) -> Path:
    """Return a pristine (or already patched) sd.cpp tree inside or at `scratch`."""
    given = os.environ.get(SOURCE_ENV)
    if given:
        path = Path(given).expanduser().resolve()
        if path.is_file():
            log(f"using {path} from {SOURCE_ENV}")
            return extract_sdist(path, lock, scratch / "tree")
        if path.is_dir():
            for candidate in (path / lock["folder"], path):
                if (candidate / "include" / "stable-diffusion.h").is_file():
                    log(f"using directory {candidate} from {SOURCE_ENV} (not hash-checked)")
                    shutil.copytree(candidate, scratch / "tree", symlinks=True,
                                    ignore=shutil.ignore_patterns(".git", STAMP_NAME))
                    return scratch / "tree"
        raise SyncError(f"{SOURCE_ENV}={given} is neither the sdist file nor a folder holding "
                        f"{lock['folder']}/include/stable-diffusion.h")
    dl = scratch / "download"
    dl.mkdir()
    return extract_sdist(fetch_sdist(lock, dl), lock, scratch / "tree")


def apply_patches(tree: Path) -> None:
    for patch in patch_files():
        if git(["apply", "--check", str(patch)], tree, check=False).returncode == 0:
            git(["apply", "--whitespace=nowarn", str(patch)], tree)
            log(f"applied {patch.name}")
        elif git(["apply", "--check", "--reverse", str(patch)], tree, check=False).returncode == 0:
            log(f"already applied {patch.name}")
        else:
            err = git(["apply", "--check", "-v", str(patch)], tree, check=False).stderr
            raise SyncError(f"patch {patch.name} does not apply to the pinned sd.cpp:\n{err}")


def ensure(lock: dict) -> Path:
    target = ROOT / lock["folder"]
    want = wanted_stamp(lock)
    stamp = target / STAMP_NAME
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        log(f"{lock['folder']} is up to date ({len(want['patches'])} patches)")
        return target
    if (target / ".git").exists():
        log(f"{lock['folder']} is a developer tree (see `sync.py dev`); left as it is")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".sync-") as tmp:
        tree = source_tree(lock, Path(tmp))
        apply_patches(tree)
        (tree / STAMP_NAME).write_text(json.dumps(want, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tree.rename(target)
    log(f"{lock['folder']} ready ({len(want['patches'])} patches)")
    return target


def dev(lock: dict) -> None:
    """Make the tree a git repo: tag `base` is pristine, then one commit per patch."""
    target = ROOT / lock["folder"]
    if (target / ".git").exists():
        raise SyncError(f"{lock['folder']} is already a developer tree")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".sync-") as tmp:
        source_tree(lock, Path(tmp)).rename(target)
    git(["init", "-q"], target)
    # commits made here become the patches: one author for all, whoever edits them
    git(["config", "user.name", "pysdcpp"], target)
    git(["config", "user.email", "pysdcpp@localhost"], target)
    git(["add", "-A"], target)
    git(["commit", "-q", "-m", f"base: {lock['package']} {lock['version']}"], target)
    git(["tag", "base"], target)
    for patch in patch_files():
        proc = git(["am", "-q", "--keep-cr", str(patch)], target, check=False)
        if proc.returncode != 0:
            raise SyncError(f"git am {patch.name} failed:\n{proc.stderr}")
    log(f"{lock['folder']} is a git repo: edit, commit, then `python vendor/sync.py export`")


def export(lock: dict) -> None:
    target = ROOT / lock["folder"]
    if not (target / ".git").exists():
        raise SyncError("no developer tree; run `python vendor/sync.py dev` first")
    with tempfile.TemporaryDirectory() as tmp:
        git(["format-patch", *FORMAT_PATCH_FLAGS, "-o", tmp, "base..HEAD"], target)
        for old in patch_files():
            old.unlink()
        PATCHES.mkdir(exist_ok=True)
        for new in sorted(Path(tmp).glob("*.patch")):
            shutil.copy(new, PATCHES / new.name)
            log(f"wrote vendor/patches/{new.name}")


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "ensure"
    actions = {"ensure": ensure, "dev": dev, "export": export}
    if cmd not in actions:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        actions[cmd](read_lock())
    except (SyncError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        log(f"ERROR: {exc}\n{detail}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
