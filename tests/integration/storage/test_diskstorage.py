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
