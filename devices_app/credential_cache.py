"""A short-lived, per-process memory of "this credential hash belongs to that device", so a
terminal's steady heartbeat needs no PostgreSQL query.

The bound: an entry is used for at most HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS after it was
read from PostgreSQL (it is never extended by use). A credential revoked, rotated or deleted
through another process therefore stops working on every process within that many seconds;
the process that revoked it forgets at once (devices_app.services clears this cache when a
revocation commits). 0 turns the cache off: every request then reads PostgreSQL.

The device state kept with the entry (status, last_seen) is the heartbeat's own working copy:
the heartbeat updates it as it writes, and any change made elsewhere (an operator's maintenance
window) reaches it within the same bound. The bound must stay below the offline grace
(HOMEPOT_MONITORING_GRACE_SECONDS), so a device the sweep marked offline has no entry left when
it comes back and is set online by its first heartbeat.

Memory is bounded: past MAX_ENTRIES the whole cache is dropped and refilled (one PostgreSQL
read per terminal, spread over its next heartbeat).
"""

import threading
import time

MAX_ENTRIES = 50_000

_entries: dict[str, tuple[float, object]] = {}
_generation = 0  # bumped by clear(): a lookup that began before a revocation caches nothing
_lock = threading.Lock()


def get(key_hash: str):
    """The cached value for this hash, or None when absent or older than the bound."""
    entry = _entries.get(key_hash)
    if entry is None:
        return None
    expires_at, value = entry
    if time.monotonic() >= expires_at:
        _entries.pop(key_hash, None)
        return None
    return value


def generation() -> int:
    return _generation


def put(key_hash: str, value, *, seconds: float, since_generation: int) -> None:
    """Remember `value` for `seconds`, unless the cache was cleared since the caller's read
    began (that read may predate a revocation)."""
    if seconds <= 0:
        return
    with _lock:
        if _generation != since_generation:
            return
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[key_hash] = (time.monotonic() + seconds, value)


def clear() -> None:
    """Forget every entry (a credential was revoked in this process). Safe to repeat."""
    global _generation
    with _lock:
        _generation += 1
        _entries.clear()
