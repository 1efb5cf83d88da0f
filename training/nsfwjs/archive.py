"""The pinned ``nsfwjs@4.4.0`` npm tarball: fetch it with ``npm pack``, verify it, read it.

The tarball is cached as ``<cache_dir>/nsfwjs-4.4.0.tgz`` (default ``<repo>/.cache/nsfwjs/``)
and is accepted only when its sha256 equals :data:`TARBALL_SHA256`. Members are read from the
tarball in memory; nothing is unpacked to disk.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from bench.clone import clone_root
from training.nsfwjs.errors import ImportFailed

logger = logging.getLogger(__name__)

NSFWJS_VERSION = "4.4.0"
PACKAGE_SPEC = f"nsfwjs@{NSFWJS_VERSION}"
TARBALL_NAME = f"nsfwjs-{NSFWJS_VERSION}.tgz"
TARBALL_SHA256 = "585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382"
MODELS_PREFIX = "package/dist/models/"


def default_cache_dir() -> Path:
    """Return ``<clone>/.cache/nsfwjs``, where the tarball is kept unless told otherwise."""
    return clone_root() / ".cache" / "nsfwjs"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def fetch_tarball(
    cache_dir: Path | None = None, *, npm: str = "npm", timeout_s: float = 600.0
) -> Path:
    """Return the path of the verified cached tarball, running ``npm pack`` if it is absent.

    Raises ImportFailed when npm is missing or fails, or serves a tarball whose sha256 is not
    the pinned one.
    """
    cache = default_cache_dir() if cache_dir is None else cache_dir
    target = cache / TARBALL_NAME
    if target.is_file():
        digest = _sha256(target.read_bytes())
        if digest == TARBALL_SHA256:
            return target
        logger.warning(
            "cached %s has sha256 %s, not the pinned %s; fetching it again",
            target,
            digest,
            TARBALL_SHA256,
        )
        target.unlink()
    npm_path = shutil.which(npm)
    if npm_path is None:
        raise ImportFailed(
            f"{npm!r} was not found on PATH: install Node.js with npm, or place {TARBALL_NAME} "
            f"(sha256 {TARBALL_SHA256}) in {cache}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as tmp:
        command = [npm_path, "pack", PACKAGE_SPEC, "--pack-destination", tmp]
        logger.info("fetching %s with: %s", PACKAGE_SPEC, " ".join(command))
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ImportFailed(
                f"`npm pack {PACKAGE_SPEC}` took longer than {timeout_s:.0f} s; "
                "check that the npm registry is reachable"
            ) from exc
        if done.returncode != 0:
            raise ImportFailed(
                f"`npm pack {PACKAGE_SPEC}` failed (exit {done.returncode}): "
                f"{_last_line(done.stderr) or 'no message'}; check that the npm registry is "
                "reachable"
            )
        packed = Path(tmp) / (_last_line(done.stdout) or TARBALL_NAME)
        if not packed.is_file():
            raise ImportFailed(
                f"`npm pack {PACKAGE_SPEC}` reported {packed.name!r} but wrote no such file "
                f"in {tmp}"
            )
        digest = _sha256(packed.read_bytes())
        if digest != TARBALL_SHA256:
            raise ImportFailed(
                f"{packed.name} from npm has sha256 {digest}, not the pinned {TARBALL_SHA256}; "
                "refusing it (the registry or a mirror served a different file)"
            )
        os.replace(packed, target)
    logger.info("cached %s (sha256 verified)", target)
    return target


class NsfwjsArchive:
    """An nsfwjs tarball held in memory, verified against the pinned sha256."""

    def __init__(self, data: bytes, *, name: str) -> None:
        self._data = data
        self.name = name
        self.sha256 = _sha256(data)

    @classmethod
    def open(cls, path: Path, *, trust_unpinned: bool = False) -> NsfwjsArchive:
        """Read and verify the tarball at ``path``.

        ``trust_unpinned`` skips the sha256 check; it exists for tests that build small
        synthetic archives. Raises ImportFailed when the file is missing or not the pinned one.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImportFailed(
                f"{path}: cannot read the nsfwjs tarball ({exc.strerror}); "
                "fetch it with training.nsfwjs.archive.fetch_tarball"
            ) from exc
        archive = cls(data, name=str(path))
        if not trust_unpinned and archive.sha256 != TARBALL_SHA256:
            raise ImportFailed(
                f"{path}: sha256 {archive.sha256} is not the pinned {PACKAGE_SPEC} tarball "
                f"({TARBALL_SHA256}); delete it and fetch it again"
            )
        return archive

    def members(self, prefix: str) -> dict[str, bytes]:
        """Return the regular files whose path starts with ``prefix``, keyed by the remainder.

        Raises ImportFailed when the tarball cannot be read.
        """
        found: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(self._data), mode="r:gz") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.startswith(prefix):
                        continue
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[member.name[len(prefix) :]] = handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ImportFailed(
                f"{self.name}: not a readable gzip tarball ({exc}); delete it and fetch it again"
            ) from exc
        return found

    def model_files(self, model_dir: str) -> dict[str, str]:
        """Return the text of every file of ``dist/models/<model_dir>/``, keyed by file name.

        Raises ImportFailed when the directory is absent or a file is not UTF-8 text.
        """
        prefix = f"{MODELS_PREFIX}{model_dir}/"
        files: dict[str, str] = {}
        for name, data in self.members(prefix).items():
            if "/" in name:
                continue
            try:
                files[name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ImportFailed(
                    f"{self.name}: {prefix}{name} is not UTF-8 text ({exc.reason})"
                ) from exc
        if not files:
            raise ImportFailed(
                f"{self.name}: no files under {prefix}; is this an nsfwjs {NSFWJS_VERSION} tarball?"
            )
        return files
