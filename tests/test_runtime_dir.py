"""The runtime dir: a dir not ours, not 0700 or a symlink is refused (never repaired);
the lock file is never followed through a symlink; at exit the broker removes only
what it made."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from auxipc.runtime_dir import SOCKETS, BrokerLock
from proto.errno import AuxError, Errno


@pytest.fixture
def base():
    d = Path(tempfile.mkdtemp(prefix="axt-rd-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def refused(root: Path, errno: int, text: str) -> None:
    with pytest.raises(AuxError) as info:
        BrokerLock(root).acquire()
    assert info.value.errno == errno and text in info.value.message, info.value.message


def test_lax_dir_is_refused_and_left_as_it_was(base):
    os.chmod(base, 0o750)
    refused(base, Errno.EPERM, "is mode 0750, not 0700")
    assert stat.S_IMODE(base.stat().st_mode) == 0o750 and not list(base.iterdir())


def test_symlinked_dir_is_refused(base):
    real = base / "real"
    real.mkdir(mode=0o700)
    link = base / "link"
    link.symlink_to(real)
    refused(link, Errno.EPERM, "is a symlink")
    assert not list(real.iterdir())


def test_file_in_place_of_the_dir_is_eexist(base):
    (base / "f").write_text("")
    refused(base / "f", Errno.EEXIST, "is not a directory")


def test_symlinked_lock_file_is_refused_and_its_target_untouched(base):
    os.chmod(base, 0o700)
    target = base.parent / f"{base.name}-victim"
    target.write_text("precious\n")
    try:
        (base / "broker.lock").symlink_to(target)
        refused(base, Errno.EPERM, "a symlink is refused")
        assert target.read_text() == "precious\n"
    finally:
        target.unlink()


def test_hard_linked_lock_file_is_refused(base):
    os.chmod(base, 0o700)
    other = base / "other"
    other.write_text("x")
    os.link(other, base / "broker.lock")
    refused(base, Errno.EPERM, "one link")


def test_release_removes_only_what_the_broker_made(base):
    os.chmod(base, 0o700)
    lock = BrokerLock(base)
    lock.acquire()
    for name in SOCKETS:
        (base / name).write_text("")
        lock.made(name)
    (base / "notes").write_text("not the broker's")
    # A socket replaced behind its back (another process bound the path) stays.
    (base / "theirs").write_text("someone else's")
    os.replace(base / "theirs", base / "pub.sock")
    lock.release()
    assert sorted(p.name for p in base.iterdir()) == ["notes", "pub.sock"]


def test_a_dir_the_broker_created_goes_at_exit(base):
    root = base / "rt"
    lock = BrokerLock(root)
    lock.acquire()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    lock.release()
    assert not root.exists()


def test_an_existing_dir_stays_at_exit(base):
    os.chmod(base, 0o700)
    lock = BrokerLock(base)
    lock.acquire()
    lock.release()
    assert base.is_dir() and not list(base.iterdir())
