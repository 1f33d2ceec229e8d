"""A hostile input corpus, generated (no network, no ``../shared``), with the expected row of every entry.

:func:`build_hostile_corpus` writes files, names, folders, links and special files of every kind
that has killed an audit or produced a wrong row, and returns one :class:`Planted` per entry:
its kind, its URI as ood-ray spells it, and the status it must end with (``None``: no row at all,
as for a symbolic link back to a folder that is already listed). Entries that need permissions
to bite are marked ``needs_non_root``: their expectation holds only when the audit runs without
``CAP_DAC_OVERRIDE`` (a non-root user, or root under ``setpriv`` dropping it).

:func:`build_hostile_manifest` writes manifests (CSV with bytes that are not UTF-8, empty cells,
a NUL byte, a FIFO, a device, a folder, repeats next to a file literally named like a repeat; a
Parquet manifest whose ``uri`` column is numeric) with their expected rows.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import struct
import urllib.parse
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096


@dataclass(frozen=True)
class Planted:
    kind: str
    uri: str
    expected: str | None
    note: str = ""
    needs_non_root: bool = False
    depth: int | None = None
    label: str | None = None


def uri_of(path: bytes | str) -> str:
    """ood-ray's URI for a local path (``file://`` + percent-encoding when not UTF-8)."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "file://" + urllib.parse.quote(raw, safe="/")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_raw(width: int, height: int, bit_depth: int, colour_type: int, rows) -> bytes:
    """A PNG from an iterable of raw scanlines (filter byte added), streamed through zlib."""
    compressor = zlib.compressobj(6)
    parts = []
    for row in rows:
        parts.append(compressor.compress(b"\x00" + row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG of an ``(H, W, C)`` uint16 array (C = 2: gray+alpha, 3: RGB, 4: RGBA)."""
    height, width, channels = array.shape
    colour_type = {2: 4, 3: 2, 4: 6}[channels]
    return png_raw(width, height, 16, colour_type, (array[y].astype(">u2").tobytes() for y in range(height)))


def big_blank_png(side: int) -> bytes:
    """A ``side x side`` RGB PNG of zeros: a few MB on disk, ``3 side^2`` bytes decoded."""
    row = bytes(side * 3)
    return png_raw(side, side, 8, 2, (row for _ in range(side)))


def bomb_header_png(width: int, height: int) -> bytes:
    return png_raw(width, height, 8, 0, [bytes(16)])


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose logical screen and image claim 65535 x 65535 pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def _write(root: bytes, relative: bytes, data: bytes, mode: int | None = None) -> bytes:
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def _deep_folder(root: bytes, name_length: int = 200) -> tuple[bytes, bytes]:
    """Nested folders past ``PATH_MAX``, made with folder descriptors (a plain path could not name
    them). Returns ``(first folder whose path is longer than PATH_MAX, path of the file inside the
    deepest folder)``."""
    name = b"d" * name_length
    fd = os.open(root, os.O_RDONLY)
    path = root
    first_too_long = None
    try:
        while len(path) <= PATH_MAX + name_length:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
            path = os.path.join(path, name)
            if first_too_long is None and len(path) > PATH_MAX - 1:
                first_too_long = path
        file_fd = os.open(b"deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG"))
        os.close(file_fd)
    finally:
        os.close(fd)
    return first_too_long, os.path.join(path, b"deep.png")


def build_hostile_corpus(root: str | bytes, huge_side: int = 13000) -> list[Planted]:
    """Write the corpus under ``root`` (which must not exist or be empty); see module docstring."""
    root = os.fsencode(root)
    os.makedirs(root, exist_ok=True)
    planted: list[Planted] = []
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")
    frames = [rgb, rgb.rotate(90), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]

    def add(kind: str, relative: bytes | str, data: bytes, expected: str | None, note: str = "", mode: int | None = None,
            **extra) -> None:
        relative = os.fsencode(relative)
        path = _write(root, relative, data, mode)
        planted.append(Planted(kind, uri_of(path), expected, note, **extra))

    # Files cut short, in every format Pillow reads (animated and multi-page ones too).
    whole = {
        "png": encode(rgb, "PNG"), "jpg": encode(rgb, "JPEG"), "bmp": encode(rgb, "BMP"), "tif": encode(rgb, "TIFF"),
        "webp": encode(rgb, "WEBP"), "avif": encode(rgb, "AVIF"), "jp2": encode(rgb, "JPEG2000"),
        "ico": encode(rgb, "ICO"), "tga": encode(rgb, "TGA"), "ppm": encode(rgb, "PPM"),
        "anim.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "anim.png": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "anim.webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "pages.tif": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
    }
    for ext, data in whole.items():
        add("intact", f"intact/whole.{ext}", data, "ok")
        add("truncated", f"truncated/half.{ext}", data[: len(data) // 2], "truncated")
    for ext in ("anim.gif", "anim.png", "pages.tif"):
        data = whole[ext]
        add("truncated", f"truncated/last_frame_cut.{ext}", data[: int(len(data) * 0.9)], "truncated",
            "first frame intact, a later one cut")
    for ext in ("png", "jpg", "webp", "gif"):
        data = whole.get(ext) or whole["anim.gif"]
        add("truncated", f"truncated/header_only.{ext}", data[:20], "truncated", "signature and nothing more")
    broken = bytearray(whole["png"])
    broken[len(broken) // 2: len(broken) // 2 + 64] = bytes(64)
    add("truncated", "truncated/zeroed_idat.png", bytes(broken), "truncated", "pixel data overwritten")

    # Bombs and huge images.
    add("bomb", "bombs/png_30000.png", bomb_header_png(30000, 30000), "too_large", "header claims 9e8 px")
    add("bomb", "bombs/gif_65535.gif", gif_bomb(), "too_large", "header claims 4.3e9 px")
    add("bomb", f"bombs/blank_{huge_side}.png", big_blank_png(huge_side), "too_large",
        "under max_pixels, over the decode memory budget")
    add("bomb", "bombs/blank_3000.png", big_blank_png(3000), "ok", "a large image within the budget")

    # Pixel modes.
    sixteen = (rng.integers(0, 65536, (24, 32, 4))).astype(np.uint16)
    add("mode", "modes/rgb16.png", png16(sixteen[:, :, :3]), "ok", "16-bit RGB", depth=16)
    add("mode", "modes/rgba16.png", png16(sixteen), "ok", "16-bit RGBA", depth=16)
    add("mode", "modes/la16.png", png16(sixteen[:, :, :2]), "ok", "16-bit gray+alpha", depth=16)
    add("mode", "modes/gray16.png", encode(Image.fromarray(sixteen[:, :, 0]), "PNG"), "ok", "16-bit gray", depth=16)
    add("mode", "modes/bilevel.png", encode(rgb.convert("1"), "PNG"), "ok", depth=1)
    add("mode", "modes/cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG"), "ok", depth=8)
    add("mode", "modes/la.png", encode(rgb.convert("LA"), "PNG"), "ok", depth=8)
    add("mode", "modes/float.tif", encode(Image.fromarray(np.zeros((8, 8), np.float32)), "TIFF"), "unsupported_mode")
    add("mode", "modes/int32.tif", encode(Image.fromarray(np.zeros((8, 8), np.int32)), "TIFF"), "unsupported_mode")
    add("mode", "modes/lab.tif", encode(rgb.convert("LAB"), "TIFF"), "unsupported_mode")

    # Not images, or formats we do not decode.
    add("not_image", "notimage/empty.png", b"", "empty")
    add("not_image", "notimage/text.jpg", b"this is a text file\n" * 20, "undecodable")
    add("not_image", "notimage/error_page.png", b"<html><body>403 Forbidden</body></html>", "undecodable")
    add("not_image", "notimage/random.bin", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "undecodable")
    add("not_image", "notimage/vector.eps", encode(rgb, "EPS"), "undecodable", "needs Ghostscript")
    add("not_image", "notimage/doc.pdf", encode(rgb, "PDF"), "undecodable")
    add("not_image", "notimage/photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(200), "undecodable", "no HEIF plugin")

    # Names.
    good = encode(rgb, "PNG")
    add("name", b"names/\xff\xfe latin-1 \xe9.png", good, "ok", "not UTF-8", label="names")
    add("name", b"names/dir\\.x.png", good, "ok", "backslash in the name", label="names")
    add("name", b"names/back\\slash.png", good, "ok", "backslash in the name", label="names")
    add("name", "names/new\nline.png", good, "ok", label="names")
    add("name", "names/hash#1 ?query=1 %20.png", good, "ok", label="names")
    add("name", "names/ leading space.png", good, "ok", label="names")
    add("name", "names/" + "x" * 250 + ".png", good, "ok", "255-byte name", label="names")
    add("name", "names/caf\u00e9 \u00fcber \u65e5\u672c.png", good, "ok", "unicode", label="names")
    add("name", "names/cafe\u0301.png", good, "ok", "unicode NFD", label="names")

    # A path longer than PATH_MAX.
    os.makedirs(os.path.join(root, b"deep"), exist_ok=True)
    too_long, _ = _deep_folder(os.path.join(root, b"deep"))
    planted.append(Planted("path", uri_of(too_long), "missing", "folder path longer than PATH_MAX"))

    # Symbolic links.
    target = _write(root, b"links/target.png", good)
    planted.append(Planted("symlink", uri_of(target), "ok"))
    os.symlink(b"target.png", os.path.join(root, b"links/to_file.png"))
    planted.append(Planted("symlink", uri_of(os.path.join(root, b"links/to_file.png")), "ok", "link to a file"))
    os.symlink(b"nowhere.png", os.path.join(root, b"links/dangling.png"))
    planted.append(Planted("symlink", uri_of(os.path.join(root, b"links/dangling.png")), "missing", "dangling link"))
    os.symlink(b"self.png", os.path.join(root, b"links/self.png"))
    planted.append(Planted("symlink", uri_of(os.path.join(root, b"links/self.png")), "missing", "link to itself"))
    os.makedirs(os.path.join(root, b"links/loopdir"))
    os.symlink(b"..", os.path.join(root, b"links/loopdir/loop"))
    planted.append(Planted("symlink", uri_of(os.path.join(root, b"links/loopdir/loop")), None, "ln -s .. (a loop)"))
    outside = os.path.join(os.path.dirname(root.rstrip(b"/")), os.path.basename(root.rstrip(b"/")) + b"-outside")
    _write(outside, b"elsewhere.png", good)
    os.symlink(outside, os.path.join(root, b"links/outside"))
    planted.append(Planted("symlink", uri_of(os.path.join(root, b"links/outside/elsewhere.png")), "ok",
                           "file in a linked folder outside the tree"))
    os.symlink(outside, os.path.join(root, b"links/outside_again"))
    planted.append(Planted("symlink", uri_of(os.path.join(root, b"links/outside_again/elsewhere.png")), None,
                           "second link to the same folder"))

    # Special files.
    fifo = os.path.join(root, b"special/pipe.png")
    os.makedirs(os.path.dirname(fifo), exist_ok=True)
    os.mkfifo(fifo)
    planted.append(Planted("special", uri_of(fifo), "missing", "FIFO"))
    sock_path = os.path.join(root, b"special/socket.png")
    here = os.getcwd()
    os.chdir(os.path.dirname(sock_path))  # AF_UNIX paths are limited to 108 bytes: bind a relative one
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("socket.png")
    finally:
        os.chdir(here)
    planted.append(Planted("special", uri_of(sock_path), "missing", "socket"))

    # Permissions (bite only without CAP_DAC_OVERRIDE).
    add("permission", "perms/unreadable.png", good, "missing", "mode 000", mode=0, needs_non_root=True)
    locked = _write(root, b"perms/locked/inside.png", good)
    os.chmod(os.path.dirname(locked), 0)
    planted.append(Planted("permission", uri_of(os.path.dirname(locked)), "missing", "folder mode 000", needs_non_root=True))
    blind = _write(root, b"perms/blind/inside.png", good)
    os.chmod(os.path.dirname(blind), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    planted.append(Planted("permission", uri_of(blind), "missing", "folder readable, not searchable", needs_non_root=True))
    return planted


def restore_permissions(root: str | bytes) -> None:
    """Give back what the corpus took away, so that the folder can be deleted."""
    root = os.fsencode(root)
    for folder in (b"perms/locked", b"perms/blind"):
        path = os.path.join(root, folder)
        if os.path.exists(path):
            os.chmod(path, 0o755)


def build_hostile_manifest(root: str, corpus_file: str) -> tuple[str, list[tuple[str, str, str]]]:
    """A CSV manifest of hostile cells in ``root``; returns its path and ``(uri, expected, note)``
    per row in manifest order. ``corpus_file`` is an existing good image to point at."""
    root_b = os.fsencode(root)
    os.makedirs(root_b, exist_ok=True)
    good = open(corpus_file, "rb").read()
    _write(root_b, b"m/a.png", good)
    _write(root_b, b"m/a.png#1", good)
    _write(root_b, b"m/0001", good)
    _write(root_b, b"m/\xe9t\xe9.png", good)
    fifo = os.path.join(root_b, b"m/pipe.png")
    os.mkfifo(fifo)
    rows: list[tuple[bytes, str, str]] = [
        (b"m/a.png", "ok", "first naming"),
        (b"m/a.png", "ok", "named twice"),
        (b"m/a.png#1", "ok", "a real file named like a repeat"),
        (b"m/0001", "ok", "digits only: kept as text"),
        (b"m/\xe9t\xe9.png", "ok", "latin-1 bytes (not UTF-8) naming a real file"),
        (b"", "missing", "empty cell"),
        (b"m/nul\x00.png", "missing", "NUL byte"),
        (b"m/pipe.png", "missing", "FIFO"),
        (b"/dev/zero", "missing", "a device"),
        (b"m", "missing", "a folder"),
        (b"m/gone.png", "missing", "does not exist"),
        (b"s3://bucket/\xff.png", "missing", "S3 key that is not UTF-8"),
    ]
    lines = [b"uri,note"]
    for uri, _, note in rows:
        lines.append(b'"' + uri + b'",' + note.encode())
    path = os.path.join(root_b, b"manifest.csv")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    expected = []
    for uri, status, note in rows:
        expected.append((uri.decode("utf-8", "backslashreplace"), status, note))
    return os.fsdecode(path), expected
