"""Queue.direct: the first attempt before storing, with a real DiskStorage and Maildirs.

Also the MaildirRelay's cache of known folders: a folder removed after a
delivery is made again (or refused with ``create=False``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import gevent
import pytest

from slimta.diskstorage import DiskStorage
from slimta.queue import Queue, QueueError
from slimta.relay.maildir import MaildirRelay

from ._helpers import make_envelope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


class RecordingDisk(DiskStorage):
    """A DiskStorage that remembers every envelope file renamed into place."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stored: list[str] = []

    def checkpoint(self, step: str, path: str) -> None:
        if step == "rename" and path.endswith(".env"):
            self.stored.append(os.path.basename(path)[:-4])


def spool_ids(spool: Path) -> list[str]:
    return sorted(name[:-4] for name in os.listdir(spool / "env") if name.endswith(".env"))


def new_files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder / "new")) if (folder / "new").is_dir() else []


def wait_for(check: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        gevent.sleep(0.02)
    return bool(check())


def make_queue(tmp_path: Path, direct: Any, **relay_args: Any) -> tuple[Queue, RecordingDisk]:
    storage = RecordingDisk(tmp_path / "spool" / "env", tmp_path / "spool" / "meta")
    queue = Queue(storage, MaildirRelay(tmp_path / "mail", **relay_args), backoff=lambda env, n: 0.2)
    queue.direct = direct
    return queue, storage


def test_all_delivered_writes_no_queue_file(tmp_path: Path) -> None:
    queue, storage = make_queue(tmp_path, lambda env: True)
    env = make_envelope(recipients=["alice@example.com", "bob@example.com"])
    ((_, id_),) = queue.enqueue(env)
    assert isinstance(id_, str)
    assert len(id_) == 32
    # Both files are in new/ when enqueue returns: the 250 waits for them.
    assert len(new_files(tmp_path / "mail" / "alice")) == 1
    assert len(new_files(tmp_path / "mail" / "bob")) == 1
    assert storage.stored == []
    assert spool_ids(tmp_path / "spool") == []
    assert os.listdir(tmp_path / "spool" / "env" / ".tmp") == []


def test_predicate_false_stores_first(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def direct(env: Any) -> bool:
        seen.append(list(env.recipients))
        return False

    queue, storage = make_queue(tmp_path, direct)
    ((_, id_),) = queue.enqueue(make_envelope(recipients=["alice@example.com"]))
    assert seen == [["alice@example.com"]]
    assert storage.stored == [id_]
    assert wait_for(lambda: len(new_files(tmp_path / "mail" / "alice")) == 1)
    assert wait_for(lambda: spool_ids(tmp_path / "spool") == [])


def test_broken_predicate_means_the_usual_path(tmp_path: Path) -> None:
    def direct(env: Any) -> bool:
        raise RuntimeError("boom")

    queue, storage = make_queue(tmp_path, direct)
    ((_, id_),) = queue.enqueue(make_envelope(recipients=["alice@example.com"]))
    assert storage.stored == [id_]
    assert wait_for(lambda: len(new_files(tmp_path / "mail" / "alice")) == 1)


def test_transient_failure_stores_only_the_undelivered_recipient(tmp_path: Path) -> None:
    # "broken"'s Maildir cannot be made: a plain file sits where tmp/ goes.
    broken = tmp_path / "mail" / "broken"
    broken.mkdir(parents=True)
    (broken / "tmp").write_bytes(b"")
    queue, storage = make_queue(tmp_path, lambda env: True)
    ((_, id_),) = queue.enqueue(make_envelope(recipients=["alice@example.com", "broken@example.com"]))
    assert storage.stored == [id_]
    assert len(new_files(tmp_path / "mail" / "alice")) == 1
    # Stored before enqueue returned, with the undelivered recipient only.
    stored_env, _ = storage.get(id_)
    assert stored_env.recipients == ["broken@example.com"]
    # It is retried: once the folder is fixed it arrives, alice gets no second copy.
    assert wait_for(lambda: storage.get(id_)[1] >= 1)
    (broken / "tmp").unlink()
    queue.start()
    try:
        assert wait_for(lambda: len(new_files(broken)) == 1)
        assert wait_for(lambda: spool_ids(tmp_path / "spool") == [])
    finally:
        queue.kill()
    assert len(new_files(tmp_path / "mail" / "alice")) == 1


def test_permanent_failure_is_bounced(tmp_path: Path) -> None:
    queue, storage = make_queue(tmp_path, lambda env: True)
    env = make_envelope(sender="sender@example.com", recipients=["alice@example.com", ".hidden@example.com"])
    ((_, id_),) = queue.enqueue(env)
    assert storage.stored[0] == id_
    assert len(new_files(tmp_path / "mail" / "alice")) == 1
    # The stored rest fails again (550 5.1.3) and the bounce reaches the
    # sender's own Maildir (delivered directly too: nothing left queued).
    assert wait_for(lambda: len(new_files(tmp_path / "mail" / "sender")) == 1)
    (name,) = new_files(tmp_path / "mail" / "sender")
    bounce = (tmp_path / "mail" / "sender" / "new" / name).read_bytes()
    assert b".hidden@example.com" in bounce
    assert b"5.1.3" in bounce
    assert wait_for(lambda: spool_ids(tmp_path / "spool") == [])


def test_store_failure_after_partial_delivery_is_a_queue_error(tmp_path: Path) -> None:
    # The spool's env directory is gone: storing the rest fails, so the
    # client is not told 250 (it sends again: a duplicate, not a loss).
    broken = tmp_path / "mail" / "broken"
    broken.mkdir(parents=True)
    (broken / "tmp").write_bytes(b"")
    queue, _ = make_queue(tmp_path, lambda env: True)
    shutil.rmtree(tmp_path / "spool" / "env")
    ((_, result),) = queue.enqueue(make_envelope(recipients=["alice@example.com", "broken@example.com"]))
    assert isinstance(result, QueueError)
    assert len(new_files(tmp_path / "mail" / "alice")) == 1


def test_split_policy_each_part_delivered_directly(tmp_path: Path) -> None:
    from slimta.policy.split import RecipientSplit

    queue, storage = make_queue(tmp_path, lambda env: True)
    queue.add_policy(RecipientSplit())
    results = queue.enqueue(make_envelope(recipients=["a@example.com", "b@example.com"]))
    assert [sorted(env.recipients) for env, _ in results] == [["a@example.com"], ["b@example.com"]]
    assert all(isinstance(id_, str) for _, id_ in results)
    assert storage.stored == []
    assert len(new_files(tmp_path / "mail" / "a")) == len(new_files(tmp_path / "mail" / "b")) == 1


@pytest.mark.parametrize("create", [True, False])
def test_known_folder_removed_between_deliveries(tmp_path: Path, create: bool) -> None:
    relay = MaildirRelay(tmp_path, create=create)
    folder = tmp_path / "u"
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True)
    first = relay.attempt(make_envelope(recipients=["u@x.test"]), 0)["u@x.test"]
    assert getattr(first, "code", None) == "250"
    shutil.rmtree(folder)
    second = relay.attempt(make_envelope(recipients=["u@x.test"]), 0)["u@x.test"]
    if create:
        assert getattr(second, "code", None) == "250"
        assert len(new_files(folder)) == 1
    else:
        assert str(getattr(second, "reply", "")).startswith("550 5.1.1 ")
        assert not folder.exists()
    third = relay.attempt(make_envelope(recipients=["u@x.test"]), 0)["u@x.test"]
    assert (getattr(third, "code", None) == "250") is create
