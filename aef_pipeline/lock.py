"""One run per store at a time: a lock file beside the store, taken over when its run is gone.

`<store>.lock` (beside the store, like `<store>.runs/`: zarr treats unknown entries inside a
store as broken groups) holds the owner's host, pid, start time and a random token. A lock is
stale when its owner is on this host and its process no longer exists, or when it has not been
refreshed for `stale_after_s` (an owner on another host: a background thread refreshes it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aef_pipeline.errors import UserInputError

STALE_AFTER_S = 600.0
REFRESH_EVERY_S = 60.0


class StoreLockedError(UserInputError):
    """Another run holds the store."""


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


@contextmanager
def store_lock(store: Path, stale_after_s: float = STALE_AFTER_S) -> Iterator[Path]:
    """Hold the store's lock for the block; refuse (StoreLockedError) while a live run holds it."""
    path = lock_path(store)
    mine = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _acquire(path, mine, stale_after_s)
    stop = threading.Event()
    refresher = threading.Thread(target=_refresh, args=(path, mine["token"], stop), daemon=True)
    refresher.start()
    try:
        yield path
    finally:
        stop.set()
        refresher.join()
        if _owner(path).get("token") == mine["token"]:
            path.unlink(missing_ok=True)


def _acquire(path: Path, mine: dict[str, Any], stale_after_s: float) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as handle:
            json.dump(mine, handle)
        return
    except FileExistsError:
        pass
    except OSError as error:
        raise UserInputError(f"cannot create {path} ({error.strerror}): choose a writable --out") from None
    owner = _owner(path)
    if not _stale(path, owner, stale_after_s):
        raise StoreLockedError(
            f"{path.with_suffix('')} is being written by another run (pid {owner.get('pid')} on "
            f"{owner.get('host')}, since {owner.get('started')}): wait for it, or delete {path} if that run is gone"
        )
    # Take the stale lock over: replace it atomically, then check no other taker replaced it after us.
    spare = path.with_name(f"{path.name}.{mine['token']}")
    spare.write_text(json.dumps({**mine, "took_over_from": owner}))
    os.replace(spare, path)
    time.sleep(0.05)
    if _owner(path).get("token") != mine["token"]:
        raise StoreLockedError(f"another run took over the stale lock {path} at the same time: try again")


def _owner(path: Path) -> dict[str, Any]:
    try:
        owner: dict[str, Any] = json.loads(path.read_text())
        return owner
    except (OSError, json.JSONDecodeError):
        return {}  # unreadable or half-written: judged by its age alone


def _stale(path: Path, owner: dict[str, Any], stale_after_s: float) -> bool:
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _alive(owner["pid"])
    try:
        return time.time() - path.stat().st_mtime > stale_after_s
    except FileNotFoundError:
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _refresh(path: Path, token: str, stop: threading.Event) -> None:
    while not stop.wait(REFRESH_EVERY_S):
        if _owner(path).get("token") == token:
            os.utime(path)
