"""Push channels: how a batch of deliveries reaches its devices. One interface, chosen per
device (`Device.push_channel`); the names map to classes in HOMEPOT_JOBS_CHANNELS.

A channel's `push` either succeeds for the whole batch or raises `PushError`; the
dispatcher then leaves the batch pending and retries it with backoff (`PartialPush`: only
the deliveries it names, known not to have gone out; the rest count as sent). A channel
never changes delivery rows itself: the dispatcher marks the batch `sent` in one UPDATE.

A push that may have reached the device must not be raised as a plain PushError: the retry
would push it again. The device contract (docs/jobs.md) still asks devices to act on a
delivery id once, because a dispatcher that dies between its push and its commit repeats it.
"""

from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

DEFAULT_CHANNELS = {
    "poll": "jobs_app.channels.poll.PollChannel",
    "mqtt": "jobs_app.channels.mqtt.MqttChannel",
}


class PushError(Exception):
    """The channel could not hand the batch over (broker down): worth a retry."""


class PartialPush(PushError):
    """Some of the batch went out, the deliveries in `unsent` certainly did not: retry only
    those."""

    def __init__(self, message: str, unsent: list[int]):
        super().__init__(message)
        self.unsent = unsent


@dataclass(frozen=True)
class Outgoing:
    """One delivery on its way: what a channel needs to address and describe it."""

    delivery_id: int
    device_id: str  # the business id (pos-terminal-009), as devices know themselves
    job_id: int
    action: str
    payload: dict
    priority: str
    deadline: str | None = None
    # Offered again after the job's deferral limit: the device must not defer it again
    # (a deferral would be ignored).
    force: bool = False
    attempt: int = 1

    def message(self) -> dict:
        return {
            "type": "deliver",
            "delivery_id": self.delivery_id,
            # Which offer of the delivery this is (1 = the first); the same attempt twice is
            # a repeated push, for the device to ignore (docs/jobs.md).
            "attempt": self.attempt,
            "job_id": self.job_id,
            "action": self.action,
            "payload": self.payload,
            "priority": self.priority,
            "deadline": self.deadline,
            "force": self.force,
        }

    def cancel_message(self) -> dict:
        """Drop this delivery: the job was cancelled after the device was sent the work."""
        return {"type": "cancel", "delivery_id": self.delivery_id, "job_id": self.job_id}


class Channel:
    name = ""

    def push(self, batch: list[Outgoing]) -> None:
        """Hand `batch` to its devices, or raise PushError."""
        raise NotImplementedError

    def cancel(self, batch: list[Outgoing]) -> None:
        """Tell devices to drop work they were sent (where the channel can); optional."""


@cache
def _load(path: str) -> Channel:
    return import_string(path)()


def get_channel(name: str) -> Channel:
    paths = {**DEFAULT_CHANNELS, **getattr(settings, "HOMEPOT_JOBS_CHANNELS", {})}
    try:
        return _load(paths[name])
    except KeyError:
        raise PushError(f"No push channel named {name!r}.") from None
