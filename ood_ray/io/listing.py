"""Listing a folder or an ``s3://`` prefix into entries, every entry in its own error handling.

A local folder is walked with ``os.scandir``, one directory at a time, so one entry that cannot
be named, stat'ed or listed never stops the walk:

- a regular file (or a symbolic link to one: files are followed) is an entry with its size;
- a FIFO, socket or device is an entry with an error (``missing``: never opened, since reading a
  FIFO blocks until a writer appears);
- a broken symbolic link, a link that points at itself, or a name whose ``stat`` fails (for
  example ``EACCES`` in a folder that can be read but not searched) is an entry with the reason;
- a sub-folder that cannot be listed (no permission, a path longer than ``PATH_MAX``) becomes one
  entry for the folder itself, with the reason; the walk goes on with its siblings;
- folders are identified by device and inode: a symbolic link to a folder that was already listed
  (a loop such as ``ln -s .. d/loop``, or a second link to one folder) is not entered again. Real
  sub-folders are walked before symbolic links to folders, so a link to a folder inside the tree
  never lists it twice and the labels come from the real path; a link to a folder outside the
  tree is listed once, under the path of the first link in path order. An audit walks real
  sub-folders in parallel tasks (:mod:`ood_ray.io.inputs`) and enters the links the same way.

Names are kept losslessly: a file name that is not UTF-8 gets the URI ``file://`` + its
percent-encoded bytes (:func:`ood_ray.io.storage.local_uri`). Hidden names (starting with ``.``)
are skipped, as before; a backslash is an ordinary character of a name (only ``/`` separates).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from ood_ray.io import storage

log = logging.getLogger(__name__)

#: Examples of skipped symbolic links kept in the listing report.
MAX_REPORTED = 20


@dataclass(frozen=True)
class ListedEntry:
    """One object of a listing. ``parts`` are the names below the root (for ``split``/``label``);
    ``error`` is set when the object cannot be read (its row will be ``missing`` with it)."""

    uri: str
    parts: tuple[str, ...]
    size: int | None = None
    error: str | None = None
    is_folder: bool = False


@dataclass
class ListingReport:
    """What the walk skipped, for ``run.json`` and the log."""

    links_skipped: int = 0
    examples: list[str] = field(default_factory=list)
    unlistable_folders: int = 0
    unreadable_entries: int = 0

    def skip_link(self, path: str, target: str) -> None:
        self.links_skipped += 1
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(f"{storage.local_uri(path)} -> {storage.local_uri(target)} (already listed)")

    def merge(self, other: ListingReport) -> ListingReport:
        self.links_skipped += other.links_skipped
        self.examples = (self.examples + other.examples)[:MAX_REPORTED]
        self.unlistable_folders += other.unlistable_folders
        self.unreadable_entries += other.unreadable_entries
        return self

    def to_dict(self) -> dict:
        return {"symlinks_to_listed_folders_skipped": self.links_skipped, "examples": self.examples,
                "unlistable_folders": self.unlistable_folders, "unreadable_entries": self.unreadable_entries}


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return f"{name}: {exc.strerror or exc}"


def _stat_error(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            return f"broken symbolic link (-> {storage.display_text(os.readlink(path))})"
        except OSError:
            return "broken symbolic link"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (ELOOP)"
    return f"cannot stat: {_reason(exc)}"


@dataclass(frozen=True)
class FolderLink:
    """A symbolic link to a folder met by a walk that does not follow links (a fan-out task): the
    driver decides, in path order after every real folder is known, which of them to enter."""

    path: str
    parts: tuple[str, ...]
    key: tuple[int, int]


@dataclass
class Walk:
    """What one walk produced: entries, what it skipped, the folders it entered (``(dev, inode)``)
    and, when it did not follow links, the links to folders it met."""

    entries: list[ListedEntry] = field(default_factory=list)
    report: ListingReport = field(default_factory=ListingReport)
    visited: set[tuple[int, int]] = field(default_factory=set)
    links: list[FolderLink] = field(default_factory=list)


def walk_folder(folder: str, parts: tuple[str, ...] = (), recursive: bool = True, follow_links: bool = True,
                visited: set[tuple[int, int]] | None = None) -> Walk:
    """Every entry under the local ``folder`` whose names below the audit's root start with
    ``parts`` (see module docstring). ``recursive=False`` lists only the folder's own non-folder
    entries; ``follow_links=False`` returns links to folders instead of entering them."""
    walk = Walk(visited=set(visited or ()))
    report, entries = walk.report, walk.entries
    try:
        top = os.stat(folder)
        walk.visited.add((top.st_dev, top.st_ino))
    except OSError:
        pass  # reported below as a folder that cannot be listed
    folders: list[tuple[str, tuple[str, ...]]] = [(folder, parts)]
    links: list[tuple[str, tuple[str, ...], os.stat_result]] = []
    while folders or links:
        if folders:
            current, current_parts = folders.pop()
        else:
            links.sort(key=lambda link: link[0])  # links to folders are entered in path order
            current, current_parts, target = links.pop(0)
            key = (target.st_dev, target.st_ino)
            if key in walk.visited:
                report.skip_link(current, os.path.realpath(current))
                continue
            walk.visited.add(key)
        try:
            with os.scandir(current) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            report.unlistable_folders += 1
            entries.append(ListedEntry(storage.local_uri(current), current_parts,
                                       error=f"cannot list folder: {_reason(exc)}", is_folder=True))
            continue
        for child in children:
            if child.name.startswith("."):
                continue
            path, child_parts = child.path, (*current_parts, storage.display_text(child.name))
            if not recursive and child.is_dir(follow_symlinks=False):
                continue  # a real sub-folder: another fragment's
            try:
                info = os.stat(path)
            except OSError as exc:
                report.unreadable_entries += 1
                entries.append(ListedEntry(storage.local_uri(path), child_parts, error=_stat_error(path, exc)))
                continue
            if stat.S_ISDIR(info.st_mode):
                if child.is_symlink():
                    if follow_links:
                        links.append((path, child_parts, info))
                    else:
                        walk.links.append(FolderLink(path, child_parts, (info.st_dev, info.st_ino)))
                    continue
                walk.visited.add((info.st_dev, info.st_ino))
                folders.append((path, child_parts))
            elif stat.S_ISREG(info.st_mode):
                entries.append(ListedEntry(storage.local_uri(path), child_parts, size=info.st_size))
            else:
                report.unreadable_entries += 1
                entries.append(ListedEntry(storage.local_uri(path), child_parts, size=None,
                                           error=f"{storage.file_kind(info.st_mode)}, not a regular file"))
        if not recursive:
            break
    entries.sort(key=lambda e: e.uri)
    return walk


def walk_local(root: str) -> tuple[list[ListedEntry], ListingReport]:
    """Every entry under the local folder ``root`` in one process (see module docstring), sorted by URI."""
    walk = walk_folder(root)
    if walk.report.links_skipped:
        log.info("listing %s: %d symbolic links to folders already listed were not followed (e.g. %s)",
                 root, walk.report.links_skipped, walk.report.examples[0])
    return walk.entries, walk.report


def walk_s3(root: str, parts: tuple[str, ...] = (), recursive: bool = True) -> tuple[list[ListedEntry], ListingReport]:
    """Every object under the ``s3://`` prefix ``root`` (keys split on ``/`` only); ``parts`` are
    the names of ``root`` below the audit's root; ``recursive=False``: only the objects directly in it."""
    fs, path = storage.resolve(root)
    prefix = path.rstrip("/") + "/"
    entries = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(prefix):] if info.path.startswith(prefix) else info.path
        entries.append(ListedEntry(storage.S3_SCHEME + info.path, (*parts, *relative.split("/")), size=info.size))
    entries.sort(key=lambda e: e.uri)
    return entries, ListingReport()


def list_entries(root: str) -> tuple[list[ListedEntry], ListingReport]:
    """Entries under a local folder or an ``s3://`` prefix."""
    if storage.is_s3(root):
        return walk_s3(root)
    return walk_local(storage.local_path(root))
