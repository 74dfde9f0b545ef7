from __future__ import annotations

from slimta.queue.dict import DictStorage
from tests.storage_conformance import StorageConformance

from .helpers import make_envelope


class TestDictStorageConformance(StorageConformance):
    def make_storage(self):
        return DictStorage()

    def reopen_storage(self, storage):
        # The same dicts in a new object: what a shelve-backed DictStorage does.
        return DictStorage(storage.env_db, storage.meta_db)


def test_ids_are_uuid4_hex():
    storage = DictStorage()
    id_ = storage.write(make_envelope(), 1.0)
    assert len(id_) == 32
    assert int(id_, 16) >= 0
    assert id_[12] == "4"


def test_uses_the_given_dicts():
    envs, metas = {}, {}
    storage = DictStorage(envs, metas)
    id_ = storage.write(make_envelope(), 5.0)
    assert id_ in envs
    assert metas[id_] == (5.0, 0)
    assert storage.get_info() == {"size": 1, "meta_size": 1}


def test_failed_meta_write_leaves_nothing_behind():
    class BrokenMeta(dict):
        def __setitem__(self, key, value):
            raise OSError("disk full")

    envs: dict = {}
    storage = DictStorage(envs, BrokenMeta())
    try:
        storage.write(make_envelope(), 1.0)
    except OSError:
        pass
    else:
        raise AssertionError("write should have failed")
    assert envs == {}


def test_last_error_is_kept_in_meta():
    storage = DictStorage()
    id_ = storage.write(make_envelope(), 1.0)
    storage.set_last_error(id_, "450 4.0.0 nope")
    assert storage.meta_db[id_] == (1.0, 0, "450 4.0.0 nope")
    assert next(iter(storage.inspect())).last_error == "450 4.0.0 nope"


def test_reads_python_slimta_dict_metadata():
    env = make_envelope()
    storage = DictStorage({"abc": env}, {"abc": {"timestamp": 7.0, "attempts": 2}})
    assert list(storage.load()) == [(7.0, "abc")]
    assert storage.get("abc") == (env, 2)
    assert storage.increment_attempts("abc") == 3
    storage.set_timestamp("abc", 8.0)
    assert list(storage.load()) == [(8.0, "abc")]
