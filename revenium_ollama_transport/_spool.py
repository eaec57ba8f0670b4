"""An on-disk spool for metering records that cannot be delivered now.

Records go to the spool when the API is down or the process is exiting; this process, or the
next one started with the same spool, delivers them later. At-least-once: a process that dies
between POSTing a file's records and ``finish`` leaves the file to be sent again, and the
Idempotency-Key / transactionId make the re-delivery harmless.

Layout of the spool directory (0700; files 0600)::

    <time_ns>-<owner>-<seq>.jsonl                  waiting; names sort by age
    <time_ns>-<owner>-<seq>.jsonl.claimed-<owner>  taken by one live owner
    .tmp-<owner>-<seq>                             being written
    locks/<owner>.lock                             flock'ed by its owner for the owner's life

An owner is one ``Spool`` in one process: ``<pid>-<random hex>``, unique even when pids are
reused. Every change of state is one ``os.rename`` or ``os.unlink``, atomic, so when several
processes race for a file exactly one wins and the others get FileNotFoundError.

A claimed file stays its owner's while the owner's lock file is locked. The kernel drops the
lock when the process dies, even on SIGKILL, and the next ``claim`` in any process renames the
dead owner's files back to waiting. A forked child gets a new owner and closes its copy of
the parent's lock descriptor, so it neither passes for its parent nor keeps the parent's lock
alive after the parent dies.

Without fcntl (Windows) a live owner cannot be told from a dead one: another owner's claimed
file is taken back once it has been claimed for ``STALE_CLAIM_SECONDS``, so a delivery slower
than that may be sent twice (harmless, as above).

File format: one line per record, ``{"id": <transaction id>, "body": <the record's JSON>}``,
the body's bytes embedded as they are, so that they come back exactly as they were put.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ._spool_dir import SUFFIX, directory_for
from ._stats import counters

try:
    import fcntl as _fcntl
except ImportError:  # Windows: no cross-process claim, see the module docstring
    _fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("revenium_ollama_transport")

STALE_CLAIM_SECONDS = 600.0  # only without fcntl
# Measuring the spool takes a stat() per file: after a long outage, thousands of them, too
# many for every write. Between measurements a writer adds what it wrote to the last total,
# and measures again when that passes the bound or this many seconds have gone by (other
# processes write too, and delivered files go).
SIZE_CHECK_SECONDS = 1.0

_SUFFIX = SUFFIX
_CLAIMED = ".claimed-"
_TMP = ".tmp-"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_LOCKS = "locks"


@dataclass(frozen=True)
class SpooledRecord:
    transaction_id: str
    body: bytes  # the record's JSON, exactly as it will be POSTed


@dataclass(frozen=True, eq=False)
class Claim:
    """A file taken by this process: deliver its records, then ``finish`` or ``release`` it."""

    records: list[SpooledRecord]
    path: Path
    _waiting_name: str = field(repr=False)
    _owner: str = field(repr=False)


def _create(path: str, data: bytes) -> None:
    """Writes ``data`` to a new file at ``path``, or raises with no file left there."""
    fd = os.open(path, _CREATE, 0o600)
    try:
        try:
            written = 0
            while written < len(data):  # a short write (a full disk, a signal) goes on
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _line(record: SpooledRecord) -> bytes:
    body = record.body
    # find, not "in": bytes' "in" first tries its operand as an int, and raises.
    if body.find(b"\n") >= 0 or body.find(b"\r") >= 0:  # pretty-printed: re-encoded
        body = orjson.dumps(orjson.loads(body))
    return b'{"id":' + orjson.dumps(record.transaction_id) + b',"body":' + body + b"}\n"


def _parse(line: bytes) -> SpooledRecord | None:
    try:
        obj = orjson.loads(line)  # also rejects a line cut short
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or "body" not in obj:
        return None
    prefix = b'{"id":' + orjson.dumps(obj["id"]) + b',"body":'
    if line.startswith(prefix) and line.endswith(b"}"):
        body = line[len(prefix) : -1]  # the bytes exactly as they were put
    else:  # written by something else: re-encode
        body = orjson.dumps(obj["body"])
    return SpooledRecord(obj["id"], body)


def _tighten(directory: Path) -> None:
    """Removes group / other access; never adds any (an unwritable directory stays so)."""
    with contextlib.suppress(OSError):
        mode = directory.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(directory, mode & 0o700)


def _time_of(name: str) -> int | None:
    try:
        return int(name.split("-", 1)[0])
    except ValueError:
        return None


class Spool:
    """One spool directory, shared by any number of processes. Thread-safe."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        # Joined as text on the write path, which runs once a batch: Path's "/" costs more
        # than the system calls around it.
        self._prefix = os.path.join(directory, "")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self._owner = ""
        self._owner_pid = -1
        self._lock_fd: int | None = None
        self._failing = False  # the last write failed and was warned about
        self._warned_corrupt = False
        self._size_estimate = 0  # bytes at the last measurement, plus those written since
        self._size_measured = -math.inf  # time.monotonic() of that measurement

    @classmethod
    def open(cls, setting: str | None, max_mb: float) -> Spool | None:
        """``setting`` is REVENIUM_SPOOL_DIR (see ``_spool_dir.directory_for``): None for
        "off", and for a directory that cannot be created or written (one warning)."""
        directory = directory_for(setting)
        if directory is None:
            return None
        spool = cls(directory, max(0, int(max_mb * 1024 * 1024)))
        try:
            spool._prepare()
        except OSError as exc:
            logger.warning(
                "metering spool disabled: cannot use %s (%s); undelivered records stay in memory",
                directory,
                exc.strerror or exc,
            )
            spool.close()
            return None
        _spools.add(spool)
        return spool

    def _prepare(self) -> None:
        directory = self.directory
        for path in (directory, directory / _LOCKS):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir(mode=0o700)
                os.chmod(path, 0o700)  # whatever the umask
            except FileExistsError:
                _tighten(path)
        with self._lock:
            owner = self._ensure_owner()  # creates the lock file: locks/ is writable
            # The directory itself (os.access is no proof: root, ACLs, read-only mounts).
            probe = self._write_tmp(owner, b"")
            os.unlink(probe)
        self._sweep_locks()

    # --- ownership ----------------------------------------------------------------------

    def _ensure_owner(self) -> str:
        """This process's owner name, made (with its lock file) on first use after start or
        fork. Called with ``self._lock`` held."""
        pid = os.getpid()
        if self._owner_pid == pid:
            return self._owner
        self._forget_owner()  # forked without the at-fork hook having run
        owner = f"{pid}-{secrets.token_hex(4)}"
        if _fcntl is not None:
            locks = self.directory / _LOCKS
            new = locks / f".new-{owner}"
            fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                # Locked before it gets the name others look for, so that nobody can find
                # it unlocked and take this live process for a dead one.
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                os.rename(new, locks / f"{owner}.lock")
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(new)
                raise
            self._lock_fd = fd
        self._owner, self._owner_pid = owner, pid
        return owner

    def _forget_owner(self) -> None:
        if self._lock_fd is not None and self._owner_pid != os.getpid():
            # The parent's descriptor. An flock belongs to the open file description and
            # lasts until every copy is closed: closing ours leaves the parent's lock held
            # while it lives and lets it go when it dies.
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
        self._owner, self._owner_pid = "", -1

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self._forget_owner()

    def _current_owner(self) -> str:
        return self._owner if self._owner_pid == os.getpid() else ""

    @contextlib.contextmanager
    def _if_dead(self, owner: str) -> Iterator[bool]:
        """Yields whether ``owner`` is dead; if so, holds its lock meanwhile, then removes it."""
        assert _fcntl is not None
        path = self.directory / _LOCKS / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            # Lock files are made before any claim and removed only once their owner is
            # dead and its files given back.
            yield True
            return
        try:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except OSError:  # EWOULDBLOCK: alive (or another process is tidying up after it)
                yield False
                return
            yield True
            with contextlib.suppress(OSError):
                os.unlink(path)
        finally:
            os.close(fd)

    def _sweep_locks(self) -> None:
        """Removes lock files of dead owners that left no claimed files behind."""
        if _fcntl is None:
            return
        with contextlib.suppress(OSError):
            for name in os.listdir(self.directory / _LOCKS):
                owner = name.removesuffix(".lock")
                if name.endswith(".lock") and owner != self._current_owner():
                    with self._if_dead(owner):
                        pass

    def _reclaim(self, names: list[str], owner: str) -> list[str]:
        """Gives dead owners' claimed files back; returns the waiting names, oldest first."""
        waiting: list[str] = []
        foreign: dict[str, list[str]] = {}
        for name in names:
            if name.endswith(_SUFFIX) and not name.startswith("."):
                waiting.append(name)
            elif _CLAIMED in name:
                other = name.partition(_CLAIMED)[2]
                if other != owner:
                    foreign.setdefault(other, []).append(name)
            elif name.startswith(_TMP):
                other = name[len(_TMP) :].rpartition("-")[0]
                if other != owner:
                    foreign.setdefault(other, []).append(name)
        for other, files in foreign.items():
            if _fcntl is None:
                waiting += self._give_back([n for n in files if self._stale(n)])
                continue
            with self._if_dead(other) as dead:
                if dead:
                    waiting += self._give_back(files)
        waiting.sort()
        return waiting

    def _stale(self, name: str) -> bool:
        try:
            return time.time() - (self.directory / name).stat().st_mtime > STALE_CLAIM_SECONDS
        except OSError:
            return False

    def _give_back(self, names: list[str]) -> list[str]:
        back = []
        for name in names:
            path = self.directory / name
            with contextlib.suppress(OSError):  # FileNotFoundError: another process was first
                if name.startswith(_TMP):
                    os.unlink(path)  # its writer died before finishing it
                else:
                    base = name.partition(_CLAIMED)[0]
                    os.rename(path, self.directory / base)
                    back.append(base)
        return back

    # --- files --------------------------------------------------------------------------

    def _write_tmp(self, owner: str, data: bytes) -> str:
        self._seq += 1
        path = f"{self._prefix}{_TMP}{owner}-{self._seq}"
        _create(path, data)
        return path

    def _warn_io(self, action: str, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "metering spool %s: cannot %s (%s); undelivered records stay in memory",
                self.directory,
                action,
                exc.strerror or exc,
            )

    def _entries(self) -> list[tuple[str, int, bool]]:
        """(name, bytes, waiting) of the record files, claimed or not."""
        entries = []
        with os.scandir(self.directory) as scan:
            for entry in scan:
                name = entry.name
                waiting = name.endswith(_SUFFIX)
                if name.startswith(".") or not (waiting or _CLAIMED in name):
                    continue
                with contextlib.suppress(OSError):  # gone meanwhile
                    entries.append((name, entry.stat().st_size, waiting))
        return entries

    def _read(self, path: Path, owner: str) -> list[SpooledRecord]:
        records = []
        bad = 0
        for line in path.read_bytes().split(b"\n"):
            if line.strip():
                record = _parse(line)
                if record is None:
                    bad += 1
                else:
                    records.append(record)
        if bad:
            counters.add("dropped.spool_corrupt", bad)  # unreadable: lost, and said so
            if not self._warned_corrupt:
                self._warned_corrupt = True
                logger.warning(
                    "metering spool: skipped %d unreadable records in %s (corrupt or truncated)",
                    bad,
                    path,
                )
            if records:
                # Rewritten without the bad lines, so that they are counted once.
                with contextlib.suppress(OSError):
                    os.replace(self._write_tmp(owner, b"".join(map(_line, records))), path)
        return records

    # --- the API ------------------------------------------------------------------------

    def put(self, records: Sequence[SpooledRecord]) -> int:
        """Writes the records as one new file. Returns how many older records were deleted
        to keep the spool within its size (the caller counts them as dropped), or -1 when
        the records could not be written (one warning; the caller keeps them)."""
        return self._write(records, claimed=False)[1]

    def put_claimed(self, records: Sequence[SpooledRecord]) -> tuple[Claim | None, int]:
        """Writes the records as one new file already claimed by this process (records on
        their way out, written ahead in case the process dies): ``finish`` it once they
        are delivered, ``release`` it for a later try. Returns the claim (None when the
        file could not be written) and, as ``put``, how many older records were deleted."""
        return self._write(records, claimed=True)

    def _write(self, records: Sequence[SpooledRecord], claimed: bool) -> tuple[Claim | None, int]:
        if not records:
            return None, 0
        data = b"".join(map(_line, records))
        with self._lock:
            try:
                owner = self._ensure_owner()
                self._seq += 1
                name = f"{time.time_ns():020d}-{owner}-{self._seq:06d}{_SUFFIX}"
                if claimed:
                    # No other process reads a live process's claimed file, so it is
                    # written under its name, not renamed to it: one system call less a
                    # batch. A write cut short by a SIGKILL leaves a last line that the
                    # replay counts as corrupt (a temporary file would be lost uncounted).
                    path = f"{self._prefix}{name}{_CLAIMED}{owner}"
                    _create(path, data)
                else:
                    # Waiting files are anyone's to claim: each appears whole, by a rename.
                    path = self._prefix + name
                    tmp = self._write_tmp(owner, data)
                    try:
                        os.rename(tmp, path)
                    except OSError:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp)
                        raise
            except OSError as exc:
                self._warn_io("write", exc)
                return None, -1
            self._failing = False
            claim = Claim(list(records), Path(path), name, owner) if claimed else None
            return claim, self._enforce_bound(len(data))

    def _enforce_bound(self, written: int) -> int:
        """Drops the oldest waiting files while the spool is over its bound; returns how
        many records went. Called with ``self._lock`` held, after writing ``written`` bytes."""
        self._size_estimate += written
        now = time.monotonic()
        if self._size_estimate <= self.max_bytes and now - self._size_measured < SIZE_CHECK_SECONDS:
            return 0
        self._size_measured = now
        try:
            entries = self._entries()
        except OSError:
            return 0
        total = sum(size for _, size, _ in entries)
        dropped = 0
        for name, size, _ in sorted(e for e in entries if e[2]):
            if total <= self.max_bytes:
                break
            path = self.directory / name
            try:
                count = path.read_bytes().count(b"\n")
                os.unlink(path)
            except FileNotFoundError:
                continue  # claimed meanwhile: no longer ours to drop
            except OSError:
                break
            total -= size
            dropped += count
        self._size_estimate = total
        return dropped

    def claim(self, limit: int) -> list[Claim]:
        """Takes whole files, oldest first, until at least ``limit`` records or none left."""
        claims: list[Claim] = []
        count = 0
        with self._lock:
            try:
                owner = self._ensure_owner()
                waiting = self._reclaim(os.listdir(self.directory), owner)
            except OSError as exc:
                self._warn_io("read", exc)
                return claims
            for name in waiting:
                if count >= limit:
                    break
                path = self.directory / f"{name}{_CLAIMED}{owner}"
                try:
                    os.rename(self.directory / name, path)
                except FileNotFoundError:
                    continue  # another process took it
                except OSError as exc:
                    self._warn_io("claim", exc)
                    break
                try:
                    if _fcntl is None:
                        os.utime(path)  # the claim's age, for STALE_CLAIM_SECONDS
                    records = self._read(path, owner)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.rename(path, self.directory / name)
                    self._warn_io("read", exc)
                    break
                if not records:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
                claims.append(Claim(records, path, name, owner))
                count += len(records)
        return claims

    def finish(self, claim: Claim) -> None:
        """All the claim's records were delivered or given up on: deletes the file."""
        if claim._owner == self._current_owner():  # not a parent's claim, in a forked child
            with contextlib.suppress(OSError):
                os.unlink(claim.path)

    def release(self, claim: Claim, left: Sequence[SpooledRecord] | None = None) -> None:
        """Not delivered: gives the file back, waiting again in its place by age. ``left``:
        the records still to deliver, when some of the claim's were delivered; the file is
        rewritten with those alone first, so that a later try does not send the others again."""
        if claim._owner != self._current_owner():
            return
        if left is not None and not left:
            self.finish(claim)
            return
        with self._lock:
            if left is not None and len(left) < len(claim.records):
                # Rewritten while still claimed, so no other process reads it half done. If
                # that fails, it goes back whole: the delivered ones go again (harmless).
                with contextlib.suppress(OSError):
                    tmp = self._write_tmp(claim._owner, b"".join(map(_line, left)))
                    try:
                        os.replace(tmp, claim.path)
                    except OSError:
                        os.unlink(tmp)
            with contextlib.suppress(OSError):
                os.rename(claim.path, self.directory / claim._waiting_name)

    def size(self) -> tuple[int, int]:
        """(files, bytes) waiting, claimed or not."""
        try:
            entries = self._entries()
        except OSError:
            return 0, 0
        return len(entries), sum(size for _, size, _ in entries)

    def oldest_age(self) -> float | None:
        """Seconds since the oldest file (claimed or not) was written; None when empty."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return None
        times = [
            t
            for name in names
            if not name.startswith(".") and (name.endswith(_SUFFIX) or _CLAIMED in name)
            if (t := _time_of(name)) is not None
        ]
        return max(0.0, (time.time_ns() - min(times)) / 1e9) if times else None

    def close(self) -> None:
        """Drops this process's lock file. Its claims, if any are left, become reclaimable."""
        with self._lock:
            if self._lock_fd is not None and self._owner_pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / _LOCKS / f"{self._owner}.lock")
                os.close(self._lock_fd)
                self._lock_fd = None
                self._owner, self._owner_pid = "", -1
        _spools.discard(self)


_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for spool in list(_spools):
        spool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
