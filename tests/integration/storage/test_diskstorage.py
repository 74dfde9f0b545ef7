"""DiskStorage: the storage conformance suite, the file format and its faults.

Everything runs on real files in pytest's tmp_path.  The crash and kill -9
tests are in test_diskstorage_crash.py.
"""

from __future__ import annotations

import errno
import os
import smtplib
import subprocess
import zlib
from pathlib import Path

import gevent
import pytest

from slimta.bounce.dsn import EnvelopeDsn, RecipientDsn
from slimta.diskstorage import DiskStorage, DiskStorageError
from slimta.edge.smtp import SmtpEdge
from slimta.envelope import Envelope
from slimta.queue import Queue, QueueError
from tests.storage_conformance import StorageConformance

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


def _envelope(rcpts: tuple[str, ...] = ("b@x.test",), body: bytes = b"hello\r\n") -> Envelope:
    env = Envelope("a@src.test", list(rcpts))
    env.parse(b"From: a@src.test\r\nSubject: disk\r\n\r\n" + body)
    env.timestamp = 1_700_000_000.25
    return env


def _spool(root: Path) -> DiskStorage:
    return DiskStorage(root / "env", root / "meta")


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file())


class TestDiskStorageConformance(StorageConformance):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path

    def make_storage(self) -> DiskStorage:
        return _spool(self.root)

    def reopen_storage(self, storage: DiskStorage) -> DiskStorage:  # type: ignore[override]
        return DiskStorage(storage.env_dir, storage.meta_dir)


# -- the on-disk format --------------------------------------------------------


def _check_record(raw: bytes, kind: bytes) -> tuple[bytes, bytes]:
    header, rest = raw.split(b"\n", 1)
    magic, version, got_kind, blob_len, data_len, crc = header.split(b" ")
    assert (magic, version, got_kind) == (b"SLIMTAQ", b"1", kind)
    blob, data = rest[: int(blob_len)], rest[int(blob_len) : int(blob_len) + int(data_len)]
    assert rest[int(blob_len) + int(data_len) :] == b"END\n"
    assert zlib.crc32(data, zlib.crc32(blob)) == int(crc, 16)
    return blob, data


def test_records_are_self_checking_json_and_raw_bytes(tmp_path: Path) -> None:
    storage = _spool(tmp_path)
    id_ = storage.write(_envelope(), 50.0)
    assert _files(tmp_path / "env") == [f"{id_}.env"]
    assert _files(tmp_path / "meta") == []  # no meta file before the first update
    assert _files(tmp_path / "env" / ".tmp") == []
    blob, data = _check_record((tmp_path / "env" / f"{id_}.env").read_bytes(), b"E")
    assert b'"sender":"a@src.test"' in blob
    assert b'"meta":{"timestamp":50.0,"attempts":0}' in blob
    assert data == b"From: a@src.test\r\nSubject: disk\r\n\r\nhello\r\n"
    storage.increment_attempts(id_)
    storage.set_last_error(id_, "451 4.4.1 later")
    blob, data = _check_record((tmp_path / "meta" / f"{id_}.meta").read_bytes(), b"M")
    assert data == b""
    assert b'"attempts":1' in blob
    assert b'"last_error":"451 4.4.1 later"' in blob
    assert _files(tmp_path / "env" / ".tmp") == []


def test_everything_an_envelope_carries_round_trips(tmp_path: Path) -> None:
    env = Envelope("s\u00e9nder@src.test", ["r1@x.test", "r2@x.test"])
    env.parse(b"Subject: caf\xc3\xa9 \xff\r\nX-A: 1\r\n\r\nbare\nlf\r\n\xfe\x00")
    env.headers.set_unixfrom("From x@y  Mon Jan  1 00:00:00 2024")
    env.client.update(ip="192.0.2.7", host="h.test", name="helo.test", protocol="ESMTPSA", auth="user")
    env.receiver = "mx.test"
    env.timestamp = 12.5
    env.dsn = EnvelopeDsn(
        ret="HDRS",
        envid="e+1",
        recipients={"r1@x.test": RecipientDsn(frozenset({"SUCCESS"}), ("rfc822", "o@x"))},
    )
    env.custom_tag = {"k": [1, 2]}
    storage = _spool(tmp_path)
    id_ = storage.write(env, 1.0)
    got, _ = DiskStorage(tmp_path / "env", tmp_path / "meta").get(id_)
    assert got.sender == env.sender
    assert got.message == env.message  # exact bytes: bare LF and NUL kept
    assert got.flatten() == env.flatten()
    assert got.headers.get_unixfrom() == "From x@y  Mon Jan  1 00:00:00 2024"
    assert got.client == env.client
    assert (got.receiver, got.timestamp) == ("mx.test", 12.5)
    assert got.dsn == env.dsn
    assert got.custom_tag == {"k": [1, 2]}

    bare = Envelope("", ["r@x.test"])  # no headers, no body
    got_bare, _ = storage.get(storage.write(bare, 1.0))
    assert (got_bare.headers, got_bare.message, got_bare.sender) == (None, None, "")


def test_delivered_recipients_are_tracked_across_reopen(tmp_path: Path) -> None:
    storage = _spool(tmp_path)
    id_ = storage.write(_envelope(rcpts=("a@t", "b@t", "c@t", "d@t")), 1.0)
    storage.set_recipients_delivered(id_, [0])
    storage.set_recipients_delivered(id_, [1])  # "c@t" in the current list
    reopened = _spool(tmp_path)
    assert reopened.get(id_)[0].recipients == ["b@t", "d@t"]
    reopened.set_recipients_delivered(id_, [1])
    assert _spool(tmp_path).get(id_)[0].recipients == ["b@t"]


def test_ids_outside_the_spool_are_unknown(tmp_path: Path) -> None:
    storage = _spool(tmp_path)
    (tmp_path / "secret.env").write_bytes(b"x")
    for bad in ("../secret", "/etc/passwd", "", "ABC"):
        with pytest.raises(KeyError):
            storage.get(bad)
        storage.remove(bad)
    with pytest.raises(KeyError):
        storage.set_timestamp("0" * 32, 1.0)
    assert (tmp_path / "secret.env").exists()


# -- start-up: damaged files and leftovers --------------------------------------


def _forge(kind: bytes, blob: bytes, data: bytes = b"") -> bytes:
    crc = zlib.crc32(data, zlib.crc32(blob))
    return b"SLIMTAQ 1 %s %d %d %08x\n" % (kind, len(blob), len(data), crc) + blob + data + b"END\n"


def test_load_quarantines_damaged_files_and_cleans_temp_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _spool(tmp_path)
    good = [storage.write(_envelope(rcpts=(f"g{i}@t",)), 10.0 + i) for i in range(3)]
    storage.set_timestamp(good[2], 99.0)
    victims = [storage.write(_envelope(), 1.0) for _ in range(6)]
    env_dir, meta_dir = tmp_path / "env", tmp_path / "meta"
    path = {v: env_dir / f"{v}.env" for v in victims}
    raw = path[victims[0]].read_bytes()
    path[victims[0]].write_bytes(raw[: len(raw) // 2])  # truncated
    path[victims[1]].write_bytes(raw[:-4])  # no END
    flipped = bytearray(path[victims[2]].read_bytes())
    flipped[-10] ^= 0x20
    path[victims[2]].write_bytes(bytes(flipped))  # CRC mismatch
    path[victims[3]].write_bytes(b"\x80\x04\x95pickle")  # bad magic (a python-slimta pickle)
    path[victims[4]].write_bytes(_forge(b"E", b'{"id": '))  # undecodable JSON
    path[victims[5]].write_bytes(_forge(b"E", b'{"id": "%s"}' % victims[5].encode()))  # wrong shape
    storage.increment_attempts(victims[0])  # its meta goes with it
    orphan_meta = meta_dir / ("e" * 32 + ".meta")
    orphan_meta.write_bytes((meta_dir / f"{victims[0]}.meta").read_bytes())
    leftover = env_dir / ".tmp" / "abc.env.1-1.tmp"
    leftover.write_bytes(b"half a mess")

    caplog.set_level("ERROR", logger="slimta.diskstorage")
    restarted = _spool(tmp_path)
    loaded = restarted.load()
    assert loaded == [(10.0, good[0]), (11.0, good[1]), (99.0, good[2])]
    quarantined = _files(env_dir / "quarantine")
    assert quarantined == sorted([f"{v}.env" for v in victims] + [f"{victims[0]}.meta", orphan_meta.name])
    assert not leftover.exists()
    assert _files(env_dir) == sorted(f"{g}.env" for g in good)
    assert len([r for r in caplog.records if "damaged spool file" in r.getMessage()]) == 8
    assert restarted.get_info() == {"size": 3, "meta_size": 1, "quarantined": 8}
    assert _spool(tmp_path).load() == loaded  # nothing more to do the second time


def test_damaged_meta_keeps_the_envelope_queued(tmp_path: Path) -> None:
    storage = _spool(tmp_path)
    id_ = storage.write(_envelope(rcpts=("a@t", "b@t")), 5.0)
    storage.set_recipients_delivered(id_, [0])
    storage.set_timestamp(id_, 500.0)
    (tmp_path / "meta" / f"{id_}.meta").write_bytes(b"SLIMTAQ 1 M 3 0 00000000\n{}}END\n")
    restarted = _spool(tmp_path)
    assert restarted.load() == [(5.0, id_)]  # back to the initial metadata
    assert restarted.get(id_)[0].recipients == ["a@t", "b@t"]  # delivered again: a duplicate, not a loss
    assert _files(tmp_path / "env" / "quarantine") == [f"{id_}.meta"]


def test_get_quarantines_a_damaged_envelope(tmp_path: Path) -> None:
    storage = _spool(tmp_path)
    id_ = storage.write(_envelope(), 5.0)
    (tmp_path / "env" / f"{id_}.env").write_bytes(b"SLIMTAQ 1 E 2 0 00000000\n{}END\n")
    with pytest.raises(KeyError):
        _spool(tmp_path).get(id_)
    assert _files(tmp_path / "env" / "quarantine") == [f"{id_}.env"]


def test_temp_dir_on_another_filesystem_is_refused(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    scratch = other / f"slimta-test-{os.getpid()}"
    try:
        with pytest.raises(DiskStorageError, match="not on the filesystem of env_dir"):
            DiskStorage(tmp_path / "env", tmp_path / "meta", scratch)
    finally:
        if scratch.exists():
            scratch.rmdir()
    assert DiskStorage(tmp_path / "env", tmp_path / "meta", tmp_path / "scratch").tmp_dir == str(
        tmp_path / "scratch"
    )


# -- the order of I/O steps and group commit -----------------------------------------


class StepRecorder(DiskStorage):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.steps: list[tuple[str, str]] = []

    def checkpoint(self, step: str, path: str) -> None:
        self.steps.append((step, os.path.basename(path)))


def test_every_change_is_fsynced_then_renamed_then_dir_synced(tmp_path: Path) -> None:
    storage = StepRecorder(tmp_path / "env", tmp_path / "meta")
    id_ = storage.write(_envelope(), 1.0)
    assert [s for s, _ in storage.steps] == ["write", "fsync", "rename", "dirsync"]
    assert storage.steps[2:] == [("rename", f"{id_}.env"), ("dirsync", "env")]
    storage.steps.clear()
    storage.set_timestamp(id_, 2.0)
    assert storage.steps[2:] == [("rename", f"{id_}.meta"), ("dirsync", "meta")]
    storage.steps.clear()
    storage.remove(id_)
    assert storage.steps == [
        ("unlink", f"{id_}.meta"),
        ("dirsync", "meta"),
        ("unlink", f"{id_}.env"),
        ("dirsync", "env"),
    ]


def test_concurrent_writes_share_directory_fsyncs(tmp_path: Path) -> None:
    storage = StepRecorder(tmp_path / "env", tmp_path / "meta")
    jobs = [gevent.spawn(storage.write, _envelope(), 1.0) for _ in range(100)]
    gevent.joinall(jobs, raise_error=True)
    steps = [s for s, _ in storage.steps]
    assert steps.count("fsync") == 100
    assert 1 <= steps.count("dirsync") < 100
    assert len(storage.load()) == 100


# -- full or failing disk ---------------------------------------------------------------


class FailingDisk(DiskStorage):
    """Fault injection through the documented hook: every write fails."""

    error = errno.EIO

    def write_data(self, fd: int, data: bytes) -> None:
        os.write(fd, data[:10])  # half a file, then the error
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC])
def test_write_error_raises_452_and_leaves_nothing_behind(tmp_path: Path, error: int) -> None:
    kept = _spool(tmp_path).write(_envelope(), 1.0)
    storage = FailingDisk(tmp_path / "env", tmp_path / "meta")
    storage.error = error
    with pytest.raises(QueueError) as info:
        storage.write(_envelope(), 2.0)
    assert info.value.reply is not None
    assert (info.value.reply.code, info.value.reply.message) == ("452", "4.3.1 Insufficient system storage")
    assert _files(tmp_path / "env") == [f"{kept}.env"]
    assert _files(tmp_path / "env" / ".tmp") == []
    assert _spool(tmp_path).load() == [(1.0, kept)]


def _send(port: int, body: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("t.test")
        client.mail("a@src.test")
        client.rcpt("b@dst.test")
        return client.data(b"Subject: fill\r\n\r\n" + body)


@pytest.fixture
def small_fs(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_452_over_smtp_and_keeps_the_queue(small_fs: Path) -> None:
    storage = _spool(small_fs)
    queue = Queue(storage)  # no relay: everything stays queued
    edge = SmtpEdge(("127.0.0.1", 0), queue, hostname="mx.test")
    edge.start()
    port = edge.server.address[1]
    body = b"x" * 100_000 + b"\r\n"
    accepted: list[bytes] = []
    code, text = 0, b""
    try:
        for _ in range(30):
            code, text = _send(port, body)
            if code != 250:
                break
            accepted.append(text)
        assert code == 452, text
        assert text.startswith(b"4.3.1"), text
        assert 5 <= len(accepted) < 30
        assert _files(small_fs / "env" / ".tmp") == []
        restarted = _spool(small_fs)
        ids = [id_ for _, id_ in restarted.load()]
        assert len(ids) == len(accepted)
        assert all(restarted.get(i)[0].message == body for i in ids)
        # Space comes back: mail is accepted again, no operator needed.
        restarted.remove(ids[0])
        restarted.remove(ids[1])
        assert _send(port, body)[0] == 250
    finally:
        edge.kill()
        queue.kill()


class TestDiskStorageWithoutGroupCommitConformance(TestDiskStorageConformance):
    def make_storage(self) -> DiskStorage:
        storage = _spool(self.root)
        storage.group_commit = False
        return storage


def test_without_group_commit_each_writer_syncs_the_directory(tmp_path: Path) -> None:
    storage = StepRecorder(tmp_path / "env", tmp_path / "meta")
    storage.group_commit = False
    id_ = storage.write(_envelope(), 1.0)
    storage.increment_attempts(id_)
    storage.remove(id_)
    assert [s for s, _ in storage.steps] == [
        *("write", "fsync", "rename", "dirsync"),
        *("write", "fsync", "rename", "dirsync"),
        *("unlink", "dirsync", "unlink", "dirsync"),
    ]
