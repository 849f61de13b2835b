"""Where artifacts and checkpoints live: a local folder, or object storage shared by the fleet.

``ARTIFACT_DIR`` and ``CHECKPOINT_DIR`` are local folders by default. Set to an fsspec URL
(``s3://bucket/prefix``, ``gs://...``, ``file:///mnt/...``) they become stores every worker reads
and writes, so machines that share no disk can continue each other's jobs:

* Checkpoints. The payload writes to a local cache (``ctx.checkpoint_dir``) exactly as before;
  before it starts, the runtime fills that cache with the newest *complete* checkpoint in the store;
  after each save the training loop calls ``ctx.checkpoint_saved(path)``, which uploads the files
  and then a ``_COMPLETE`` marker, last. A checkpoint without its marker (an upload cut short by
  the preemption) is never trusted.
* Artifacts. Saved as safetensors only (a file that holds pickled weights is refused), hashed
  (sha256, recorded in the ledger) and uploaded; a later job fetches one into a local
  content-addressed cache and checks the hash before using it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

from core.errors import ConfigError, PermanentError

log = logging.getLogger("budgetq.worker")

COMPLETE = "_COMPLETE"
_STEP = re.compile(r"^step-(\d+)$")
# Formats that unpickle on load, so loading them can run code: budgetq stores weights as safetensors only.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def is_url(location: str) -> bool:
    return "://" in location


class Store:
    """A folder or an fsspec URL, with the few operations budgetq needs: put, get, list, delete."""

    def __init__(self, location: str, options: Optional[dict[str, Any]] = None, *, variable: str = "the store") -> None:
        self.location = location.rstrip("/") if is_url(location) else location
        self.remote = is_url(location)
        if not self.remote:
            return
        try:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.location, **(options or {}))
        except (ImportError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{variable} {self.location!r} cannot be opened ({type(exc).__name__}: {exc});"
                " install the filesystem's package (s3fs for s3://, gcsfs for gs://) or fix STORAGE_OPTIONS"
            ) from None
        self.root = self.root.rstrip("/")

    def url(self, *parts: str) -> str:
        return "/".join([self.location, *parts])

    def path(self, *parts: str) -> str:
        """The filesystem path (no scheme) of ``parts`` under this store."""
        return "/".join([self.root, *parts])

    def put(self, local: Path, *parts: str) -> str:
        """Upload a file, or a folder file by file; return its URL."""
        target = self.path(*parts)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for file in files:
            dest = target if file == local else f"{target}/{file.relative_to(local).as_posix()}"
            self.fs.put_file(str(file), dest)
        return self.url(*parts)

    def write_text(self, text: str, *parts: str) -> None:
        with self.fs.open(self.path(*parts), "w") as handle:
            handle.write(text)

    def get(self, remote_path: str, local: Path) -> Path:
        """Download a file or every file under a prefix to ``local``."""
        self.fs.invalidate_cache()  # other workers write here: never answer from this process's listing cache
        if self.fs.isfile(remote_path):
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote_path, str(local))
            return local
        found = self.fs.find(remote_path)
        if not found:
            raise FileNotFoundError(remote_path)
        for file in found:
            dest = local / file[len(remote_path):].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(file, str(dest))
        return local

    def find(self, *parts: str) -> list[str]:
        self.fs.invalidate_cache()
        try:
            return list(self.fs.find(self.path(*parts)))
        except FileNotFoundError:
            return []

    def delete(self, remote_path: str) -> None:
        for file in sorted(self.fs.find(remote_path), key=lambda f: not f.endswith(COMPLETE)):
            self.fs.rm_file(file)  # the marker first: a half-deleted checkpoint is never taken for whole


# ---------------------------------------------------------------------------------------------
# Checkpoints


class Checkpoints:
    """One job's checkpoints: a local folder the payload uses, mirrored to a shared store if there is one."""

    def __init__(self, store: Store, job_id: str, local: Path, *, keep: int = 2) -> None:
        self.store, self.job_id, self.local, self.keep = store, job_id, local, keep

    def restore(self) -> list[str]:
        """Download the newest complete checkpoint of each training run that this machine lacks.

        Returns the checkpoints fetched, as ``run/step-N`` (nothing for a local store).
        """
        if not self.store.remote:
            return []
        fetched = []
        for run, step, remote in self._complete():
            target = self.local / run / f"step-{step:06d}"
            if target.is_dir():
                continue
            partial = target.with_name(target.name + f".download-{uuid.uuid4().hex[:8]}")
            self.store.get(remote, partial)
            (partial / COMPLETE).unlink(missing_ok=True)
            partial.rename(target)  # whole or not at all, like a local save
            fetched.append(f"{run}/{target.name}")
        return fetched

    def upload(self, folder: Path) -> str:
        """Upload a checkpoint folder saved under the local cache, then its marker; prune old ones."""
        if not self.store.remote:
            return str(folder)
        relative = folder.relative_to(self.local).as_posix()
        url = self.store.put(folder, self.job_id, relative)
        self.store.write_text("complete\n", self.job_id, relative, COMPLETE)
        self._prune(folder.parent.relative_to(self.local).as_posix())
        return url

    def _complete(self) -> list[tuple[str, int, str]]:
        """(run, step, remote folder) of the newest complete checkpoint of each run in the store."""
        prefix = self.store.path(self.job_id) + "/"
        newest: dict[str, tuple[int, str]] = {}
        for file in self.store.find(self.job_id):
            if not file.endswith("/" + COMPLETE):
                continue
            folder = file[: -len(COMPLETE) - 1]
            run, _, name = folder[len(prefix):].rpartition("/")
            match = _STEP.match(name)
            if match and int(match.group(1)) > newest.get(run, (-1, ""))[0]:
                newest[run] = (int(match.group(1)), folder)
        return [(run, step, folder) for run, (step, folder) in sorted(newest.items())]

    def _prune(self, run: str) -> None:
        steps = set()
        for file in self.store.find(self.job_id, run):
            name = file[len(self.store.path(self.job_id, run)) + 1:].split("/", 1)[0]
            if (match := _STEP.match(name)) is not None:
                steps.add(int(match.group(1)))
        for step in sorted(steps)[: -self.keep]:
            self.store.delete(self.store.path(self.job_id, run, f"step-{step:06d}"))


# ---------------------------------------------------------------------------------------------
# Artifacts


def digest(path: Path) -> tuple[str, int]:
    """sha256 of a file, or of a folder's sorted relative paths and contents; and the byte count."""
    sha, size = hashlib.sha256(), 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        sha.update(str(file.relative_to(path)).encode() if file != path else b"")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
                size += len(chunk)
    return sha.hexdigest(), size


def refuse_pickles(path: Path, name: str) -> None:
    """Raise ``PermanentError`` if an artifact holds a file that would be unpickled to load."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        with open(file, "rb") as handle:
            head = handle.read(4)
        if file.suffix.lower() in PICKLE_SUFFIXES or head.startswith(_PICKLE_MAGIC):
            shown = file.name if file == path else file.relative_to(path).as_posix()
            raise PermanentError(
                f"artifact {name!r} holds {shown}, a pickle or torch.save file; models are stored as safetensors only"
                " (save_model / safetensors.torch.save_file)"
            )


def store_artifact(store: Store, local: Path, *, job_id: str, attempt: int, name: str) -> tuple[str, str, int]:
    """Put an artifact into the store; return (uri, sha256, bytes). Local stores copy into the folder."""
    local = Path(local)
    refuse_pickles(local, name)
    sha, size = digest(local)
    if store.remote:
        return store.put(local, job_id, str(attempt), name), sha, size
    dest = Path(store.location) / job_id / str(attempt) / name
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(local, dest) if local.is_dir() else shutil.copy2(local, dest)
    return str(dest), sha, size


def fetch_artifact(uri: str, sha256: Optional[str], *, cache: Path, options: Optional[dict[str, Any]] = None) -> Path:
    """A local path holding the artifact at ``uri``, its sha256 checked.

    A local path is checked where it lies. A URL is downloaded once into a content-addressed
    cache (``cache/<sha256>/``) and checked before it is marked usable.
    """
    if not is_url(uri):
        path = Path(uri)
        if not path.exists():
            raise PermanentError(f"artifact {uri} is missing on this machine; use an object store (s3://...) for ARTIFACT_DIR")
        _check(path, sha256, uri)
        return path
    if not sha256:
        raise PermanentError(f"artifact {uri} has no sha256 in the ledger; it cannot be verified")
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    home = cache / sha256
    if (home / ".verified").is_file():
        return home / name
    store = Store(uri, options, variable="the artifact URL")
    partial = cache / f".{sha256}.{uuid.uuid4().hex[:8]}"
    try:
        store.get(store.root, partial / name)
        _check(partial / name, sha256, uri)
        (partial / ".verified").write_text(sha256 + "\n")
        if home.exists():
            shutil.rmtree(partial, ignore_errors=True)  # another process fetched it meanwhile
        else:
            os.replace(partial, home)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return home / name


def _check(path: Path, sha256: Optional[str], uri: str) -> None:
    if sha256 is None:
        return
    found, _ = digest(path)
    if found != sha256:
        raise PermanentError(f"artifact {uri} has sha256 {found[:12]}..., not the {sha256[:12]}... the ledger recorded; refusing to load it")
