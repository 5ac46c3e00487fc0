"""Walking folders for images: recursive, deterministic, hidden entries skipped, no symlink loops.

Symbolic links (to folders or files) are followed only when they lead inside the roots being
walked; links that lead elsewhere (``link -> ..``, ``link -> /etc``) are skipped and counted in
:class:`WalkStats`, unless ``follow_links`` asks for them.

Each file is yielded as a :class:`FileEntry` (absolute path, size, mtime in ns). A path is the
``str`` that ``os`` gives and takes: a name that is not valid UTF-8 keeps its bytes as lone
surrogates (``os.fsdecode``), so it names its own file and never equals another name; the catalog
stores its exact bytes and shows it with ``\\xNN`` escapes (:func:`display_path`). Entries that cannot
be used at all (a broken symlink, a file that cannot be stat'ed, a folder that cannot be listed)
come with ``error`` set, so the caller records them as failures instead of losing them.
Include/exclude globs match the path relative to the walked root (``fnmatch``; ``**/`` also
matches zero folders), e.g. ``--include '*.jpg' --exclude 'raw/**'``.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fgsearch.errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# formats Pillow opens but only identifies (stubs: MPEG video, scientific data, Windows metafiles):
# not walked unless asked for with --ext
_STUBS = frozenset({"MPEG", "BUFR", "GRIB", "HDF5", "WMF"})


def readable_extensions(extra: Iterable[str] = ()) -> frozenset[str]:
    """The extensions the walker picks up: the common photo formats, every other format the
    installed Pillow (with its plugins, e.g. pillow-heif) can read, and ``extra`` (``.heic`` or
    ``heic``). Files that turn out not to decode are recorded as failures like any other."""
    from PIL import Image

    from fgsearch.decode import decodable_formats

    formats = set(decodable_formats()) - _STUBS
    readable = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in formats}
    added = set()
    for e in extra:
        e = e.strip().lower()
        if not e or e in (".", "*"):
            raise InputError("{ext} {got!r} is not a file extension; give one like .heic", field="ext", got=e)
        added.add(e if e.startswith(".") else "." + e)
    return IMAGE_EXTENSIONS | readable | added


@dataclass
class WalkStats:
    """What a walk left out, for the run's warnings: files that the include/exclude globs
    skipped and symbolic links that lead outside the roots."""

    filtered: int = 0
    links_outside: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None


def display_path(path: str) -> str:
    """A path as text (JSON, HTML, messages): bytes of its name that are not valid UTF-8 as
    ``\\xNN`` escapes. For showing only: a real file may be called by that text; open, compare and
    store the path itself."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    for pat in patterns:
        if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(os.path.basename(rel), pat):
            return True
        if pat.startswith("**/") and fnmatch.fnmatchcase(rel, pat[3:]):
            return True
        if pat.endswith("/**") and (rel == pat[:-3] or rel.startswith(pat[:-3] + "/")):
            return True
    return False


def walk(
    roots: Iterable[str | os.PathLike[str]],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    hidden: bool = False,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    *,
    follow_links: bool = False,
    within: Iterable[str | os.PathLike[str]] = (),
    stats: WalkStats | None = None,
) -> Iterator[FileEntry]:
    """Yield image files under ``roots`` in sorted order (a root may also be a single file).

    Symbolic links are followed when their target lies inside ``roots`` or ``within`` (the other
    roots of the same run), or everywhere with ``follow_links``."""
    include, exclude = tuple(include), tuple(exclude)
    paths = [os.path.abspath(os.path.expanduser(os.fspath(r))) for r in roots]
    zones = None if follow_links else [os.path.realpath(z) for z in [*paths, *within]]
    walker = _Walker(include, exclude, hidden, extensions, zones, stats if stats is not None else WalkStats())
    for root_s in paths:
        if not os.path.exists(root_s):
            raise InputError(f"{root_s} does not exist; give a folder of images")
        if not os.path.isdir(root_s):  # a file (or a pipe or device: the decoder's guard names it)
            yield _entry(root_s)
            continue
        yield from walker.walk_dir(root_s, root_s, set())


def _entry(path: str) -> FileEntry:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileEntry(path, error="broken symbolic link or file vanished")
    except OSError as e:
        return FileEntry(path, error=f"cannot stat: {e.strerror or e}")
    return FileEntry(path, st.st_size, st.st_mtime_ns)


def _inside(path: str, zones: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == z or real.startswith(z.rstrip(os.sep) + os.sep) for z in zones)


@dataclass
class _Walker:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    hidden: bool
    extensions: frozenset[str]
    zones: list[str] | None  # real paths links may lead into; None: follow every link
    stats: WalkStats

    def _leaves(self, de: os.DirEntry[str], path: str) -> bool:
        """Whether ``de`` is a symbolic link that leads outside the zones (then it is skipped)."""
        if self.zones is None or not de.is_symlink() or not os.path.exists(path) or _inside(path, self.zones):
            return False
        self.stats.links_outside.append(display_path(path))
        return True

    def walk_dir(self, directory: str, root: str, visited: set[tuple[int, int]]) -> Iterator[FileEntry]:
        try:
            st = os.stat(directory)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in visited:  # a symlink cycle or a second link to a folder already walked
            return
        visited.add(key)
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            yield FileEntry(directory, error="folder cannot be read (permission denied)")
            return
        except OSError as e:
            yield FileEntry(directory, error=f"folder cannot be read: {e.strerror or e}")
            return
        for de in entries:
            if not self.hidden and de.name.startswith("."):
                continue
            path = os.path.join(directory, de.name)
            rel = os.path.relpath(path, root)
            try:
                is_dir = de.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if (self.exclude and _matches(rel, self.exclude)) or self._leaves(de, path):
                    continue
                yield from self.walk_dir(path, root, visited)
                continue
            if os.path.splitext(de.name)[1].lower() not in self.extensions:
                continue
            if (self.exclude and _matches(rel, self.exclude)) or (self.include and not _matches(rel, self.include)):
                self.stats.filtered += 1
                continue
            try:
                if de.is_symlink() and not os.path.exists(path):
                    yield FileEntry(path, error="broken symbolic link")
                    continue
                if not stat.S_ISREG(os.stat(path).st_mode) or self._leaves(de, path):
                    continue
            except OSError:
                pass
            yield _entry(path)
