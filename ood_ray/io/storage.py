"""One way to reach bytes by URI: local paths and ``s3://`` through ``pyarrow.fs``.

S3 settings come only from the environment (never from the config, never logged):
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or the instance profile
(pyarrow's default credential chain), ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` (default
``us-east-1``) and ``AWS_ENDPOINT_URL`` (``http://host:port`` for MinIO, SeaweedFS or any other
S3-compatible store). Ray workers inherit these from the driver or from the cluster's environment.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
import random
import stat
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"


class NotARegularFile(OSError):
    """The path names a FIFO, socket, device or folder: never opened for reading (a FIFO would
    block the worker until a writer appears)."""


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """``"a FIFO"``, ``"a folder"``, ... for a ``st_mode`` that is not a regular file."""
    for test, name in _FILE_KINDS:
        if test(mode):
            return name
    return "not a regular file"


def local_uri(path: str) -> str:
    """The URI of a local path: the path itself when it is valid UTF-8; otherwise (a name with
    bytes that are not UTF-8, seen by Python as surrogate escapes) ``file://`` plus the
    percent-encoded bytes -- lossless, and never equal to a plain path (those start with ``/``)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return FILE_SCHEME + urllib.parse.quote(os.fsencode(path), safe="/")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (inverse of :func:`local_uri`; ``file://`` URIs are
    percent-decoded, as RFC 8089 says)."""
    if uri.startswith(FILE_SCHEME):
        return os.fsdecode(urllib.parse.unquote_to_bytes(uri[len(FILE_SCHEME):]))
    return uri


def display_text(text: str) -> str:
    """``text`` with surrogate escapes (undecodable bytes of a file name) as ``\\xNN``: storable
    as UTF-8, for labels and split names taken from folder names."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def _endpoint_from_env() -> tuple[str | None, str]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None, "https"
    scheme = "https"
    if "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    return endpoint.rstrip("/"), scheme


#: Per-request timeouts of the S3 client (seconds): a stalled connection fails and is retried
#: instead of holding a worker (``OOD_RAY_S3_REQUEST_TIMEOUT_S`` / ``..._CONNECT_TIMEOUT_S``).
S3_REQUEST_TIMEOUT_S = 20.0
S3_CONNECT_TIMEOUT_S = 5.0
#: Attempts of each request inside the S3 client (every reader of it, DuckDB's scans included).
S3_CLIENT_ATTEMPTS = 8


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, scheme: str, region: str, request_timeout: float,
                   connect_timeout: float) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region, "scheme": scheme, "request_timeout": request_timeout,
                    "connect_timeout": connect_timeout,
                    # the client retries each request (503, 5xx, network errors) with the SDK's backoff;
                    # RetryPolicy below bounds whole operations (a read, a write) on top of that
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_CLIENT_ATTEMPTS)}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def s3_used() -> bool:
    """Whether this process has made an S3 filesystem (so the AWS SDK and its threads are running:
    a process forked from it must not use S3, see ood_ray.run.local)."""
    return _s3_filesystem.cache_info().currsize > 0


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem described by the environment (cached per process)."""
    endpoint, scheme = _endpoint_from_env()
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    request = float(os.environ.get("OOD_RAY_S3_REQUEST_TIMEOUT_S", S3_REQUEST_TIMEOUT_S))
    connect = float(os.environ.get("OOD_RAY_S3_CONNECT_TIMEOUT_S", S3_CONNECT_TIMEOUT_S))
    return _s3_filesystem(endpoint, scheme, region, request, connect)


# ---------------------------------------------------------------------------------------------
# Bounded retries of transient object-store errors

#: Error texts of object stores that mean "this will not change by asking again".
_PERMANENT = ("NO_SUCH_KEY", "NoSuchKey", "NO_SUCH_BUCKET", "NoSuchBucket", "ACCESS_DENIED", "AccessDenied",
              "HTTP status 404", "HTTP status 403", "HTTP status 400", "InvalidAccessKeyId", "SignatureDoesNotMatch",
              "Path does not exist", "INVALID_PARAMETER")


def is_transient(exc: BaseException) -> bool:
    """Whether asking again may succeed: a throttle (503 SlowDown), a 5xx, a reset or timed-out
    connection -- not a missing key, a permission refused, or a local file's error."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, NotARegularFile)):
        return False
    if not isinstance(exc, OSError):
        return False
    text = str(exc)
    if any(marker in text for marker in _PERMANENT):
        return False
    return "AWS Error" in text or "curl" in text.lower() or "connection" in text.lower() or "timed out" in text.lower() \
        or isinstance(exc, (ConnectionError, TimeoutError))


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter (``io.retry_*``): attempt ``k`` waits
    ``min(max_delay_s, base_delay_s * 2**k) * U(0.5, 1)`` first. Local paths are never retried."""

    attempts: int = 12
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0

    def call(self, fn: Callable[[], T], uri: str = "") -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised when permanent
                if attempt == self.attempts - 1 or not is_s3(uri) or not is_transient(exc):
                    raise
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** attempt) * random.uniform(0.5, 1.0)
                log.debug("transient error on %s (attempt %d of %d, retrying in %.2fs): %s", uri, attempt + 1,
                          self.attempts, delay, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                time.sleep(delay)
        raise AssertionError("unreachable")


DEFAULT_RETRY = RetryPolicy()


_LOCAL = pafs.LocalFileSystem()


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path, ``file://`` URI or ``s3://bucket/key``."""
    if is_s3(uri):
        return s3_filesystem(), uri[len(S3_SCHEME) :].rstrip("/")
    return _LOCAL, os.path.abspath(local_path(uri))


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (S3) or the OS separator (local)."""
    if is_s3(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def normalize_uri(uri: str) -> str:
    """Canonical spelling: absolute local path (see :func:`local_uri`), or ``s3://bucket/key``
    without a trailing ``/``."""
    if is_s3(uri):
        return uri.rstrip("/")
    return local_uri(resolve(uri)[1])


#: What a local read asks for beyond the size ``fstat`` gave, when the file grew since.
_GROWTH_CHUNK = 1 << 20


def _read_local(path: str, limit: int | None) -> bytes:
    """Read a local regular file; anything else (FIFO, device, folder) raises
    :class:`NotARegularFile` without blocking: the open is non-blocking and checked by ``fstat``.

    The read asks for the file's size plus one byte (a file that grew since ``fstat`` is read on,
    in chunks, to its end or to ``limit``), never for ``limit`` bytes at once: a buffered
    ``read(limit)`` allocates ``limit`` bytes first -- with the default ``max_file_bytes`` a 1 GiB
    mapping, made and dropped for every file (measured: 23 us a CIFAR-10 JPEG against 5 us).
    A first read that returns exactly the size ``fstat`` gave is the whole file; a file that
    reports no size (``/proc``) or more bytes than it did is read on to its end. ``O_NONBLOCK``
    has no effect on a regular file, so it is left set (4 syscalls a file instead of 7: 4.8 ->
    4.4 us a CIFAR-10 JPEG, one core)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(f"{file_kind(info.st_mode)}, not a regular file")
        target = info.st_size + 1 if limit is None else min(info.st_size + 1, limit)
        if info.st_size and target > info.st_size:
            first = os.read(fd, target)
            if len(first) == info.st_size:
                return first
            parts, total = [first], len(first)
        else:
            parts, total = [], 0
        while True:
            if total >= target:
                if limit is not None and total >= limit:
                    break
                target = total + _GROWTH_CHUNK if limit is None else min(total + _GROWTH_CHUNK, limit)
            chunk = os.read(fd, target - total)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def read_error_text(exc: BaseException) -> str:
    """A short reason for a failed read: ``FileNotFoundError: No such file or directory`` (the
    path is on the row already), or the first line of any other error."""
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, NotARegularFile):
        return f"{type(exc).__name__}: {exc.strerror}"
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def read_bytes(uri: str, limit: int | None = None, retry: RetryPolicy = DEFAULT_RETRY) -> bytes:
    """The object's bytes; with ``limit``, at most ``limit`` bytes are read (and returned).

    Local paths are opened only when they are regular files (see :func:`_read_local`); S3 reads
    are retried on transient errors (``retry``)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return _read_local(path, limit)

    def read() -> bytes:
        with fs.open_input_stream(path) as stream:
            return stream.read() if limit is None else stream.read(limit)

    return retry.call(read, uri)


def exists(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    fs, path = resolve(uri)
    return retry.call(lambda: fs.get_file_info(path), uri).type != pafs.FileType.NotFound


def is_dir(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    fs, path = resolve(uri)
    return retry.call(lambda: fs.get_file_info(path), uri).type == pafs.FileType.Directory


def write_bytes_atomic(uri: str, data: bytes, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Write ``data`` so readers see the old object or the new one, never a partial one.

    Local: write a temporary sibling, then ``os.replace``. S3: a single PUT is atomic (retried on
    transient errors).
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        make_parent_dirs(path)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return

    def put() -> None:
        with fs.open_output_stream(path) as stream:
            stream.write(data)

    retry.call(put, uri)


#: A string column is dictionary-encoded in Parquet when it has at most this share of distinct values.
DICTIONARY_MAX_DISTINCT_SHARE = 0.5


def dictionary_columns(table) -> list[str]:
    """The string columns of ``table`` worth a Parquet dictionary: those whose values repeat
    (status, split, label, format, band), not ids, URIs and hashes, where Parquet's default
    (a dictionary for every column) only spends time before falling back to plain values, and
    not the numbers, which zstd packs as well without one. Measured on a 1,024-row block of
    CIFAR-10 scan output, one core: ``images`` 7.4 -> 5.3 us a row to write, ``channels`` 4.0 ->
    2.6, files 5% smaller."""
    import pyarrow as pa
    import pyarrow.compute as pc

    limit = table.num_rows * DICTIONARY_MAX_DISTINCT_SHARE
    return [field.name for field, column in zip(table.schema, table.columns)
            if (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)) and table.num_rows
            and pc.count_distinct(column, mode="all").as_py() <= limit]


#: The codec of the files a run keeps (the committed tables, the coalesced parts).
KEPT_COMPRESSION = "zstd"
#: The codec of the files a later step of the run reads once and rewrites (staged tables, the
#: scan's parts that compaction coalesces): lz4 writes a 2,048-row block of CIFAR-10 scan output
#: in 2.1 us a row for ``images`` (zstd 3.4) and 0.43 for ``channels`` (zstd 0.65), one core,
#: files 12-19% larger -- about 2 us of the scan's ~300 us an image (measured 2026-12-07).
WORK_COMPRESSION = "lz4"


def write_parquet(uri: str, table, retry: RetryPolicy = DEFAULT_RETRY, row_group_size: int | None = None,
                  compression: str = KEPT_COMPRESSION) -> None:
    """Write one Parquet file (``compression``: zstd unless the file is rewritten later; dictionaries
    where values repeat: :func:`dictionary_columns`): locally to a temporary name renamed into
    place, on S3 as one upload retried on transient errors -- a reader never sees half a file."""
    import pyarrow.parquet as pq

    options = {"compression": compression, "row_group_size": row_group_size,
               "use_dictionary": dictionary_columns(table)}
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        make_parent_dirs(path)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)
        return
    retry.call(lambda: pq.write_table(table, path, filesystem=fs, **options), uri)


def write_parquet_stream(uri: str, schema, tables, retry: RetryPolicy = DEFAULT_RETRY) -> int:
    """Write the Arrow ``tables`` (an iterable, each cast to ``schema``) as one Parquet file (zstd;
    dictionaries where the first table's values repeat), one row group per table, holding one table
    in memory at a time: into a local temporary file, then renamed into place (local) or uploaded
    as one retried PUT (S3). Returns the rows written."""
    import tempfile

    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:
        make_parent_dirs(path)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    else:
        handle, tmp = tempfile.mkstemp(suffix=".parquet")
        os.close(handle)
    rows = 0
    tables = iter(tables)
    first = next(tables, None)
    dictionary = dictionary_columns(first) if first is not None else []
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=dictionary) as writer:
            for table in itertools.chain([first] if first is not None else [], tables):
                writer.write_table(table.cast(schema), row_group_size=max(1, table.num_rows))
                rows += table.num_rows
        if local:
            os.replace(tmp, path)
            return rows

        def upload() -> None:
            with open(tmp, "rb") as source, fs.open_output_stream(path) as target:
                while chunk := source.read(8 << 20):
                    target.write(chunk)

        retry.call(upload, uri)
        return rows
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_parquet(uri: str, columns: list[str] | None = None, retry: RetryPolicy = DEFAULT_RETRY):
    """One Parquet file as an Arrow table (S3 reads retried on transient errors)."""
    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    return retry.call(lambda: pq.read_table(path, filesystem=fs, columns=columns), uri)


def read_parquet_present(uri: str, columns: list[str] | None, retry: RetryPolicy = DEFAULT_RETRY):
    """The ``columns`` of one Parquet file that it has (``None``: all; one open of the file; retried on S3)."""
    import pyarrow.parquet as pq

    fs, path = resolve(uri)

    def read():
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            present = set(parquet.schema_arrow.names)
            return parquet.read(columns=None if columns is None else [c for c in columns if c in present])

    return retry.call(read, uri)


def copy_file(source: str, target: str, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Copy one object (server-side on S3)."""
    fs, src = resolve(source)
    _, dst = resolve(target)
    if isinstance(fs, pafs.LocalFileSystem):
        make_parent_dirs(dst)
    retry.call(lambda: fs.copy_file(src, dst), source)


def list_files(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> list[tuple[str, int]]:
    """Every regular file under ``uri`` (recursive) as ``(uri, size_bytes)``, sorted by uri."""
    fs, path = resolve(uri)
    infos = retry.call(lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)), uri)
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        out.append((S3_SCHEME + info.path if is_s3(uri) else info.path, info.size))
    out.sort()
    return out


def delete_files(uris: list[str], retry: RetryPolicy = DEFAULT_RETRY) -> None:
    for uri in uris:
        fs, path = resolve(uri)
        try:
            retry.call(lambda: fs.delete_file(path), uri)
        except FileNotFoundError:
            pass


def make_dirs(uri: str) -> None:
    """Create a local folder (S3 has no folders: nothing to do)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)


def make_parent_dirs(uri: str) -> None:
    """Create the local folder that will hold ``uri`` (no-op on S3)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)


def delete_tree(uri: str) -> None:
    """Remove everything under ``uri`` (a local folder, or every object under an S3 prefix --
    directory-marker objects such as those Ray Train's checkpointing creates included)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    delete_files([u for u, _ in list_files(uri)])
    try:
        fs.delete_dir(path.rstrip("/"))
    except (FileNotFoundError, OSError):
        pass
