"""The HTTP poll channel: nothing to push. Marking the batch `sent` puts it in the device's
mailbox, which `GET /api/v1/agent/commands` reads. Works behind any NAT."""

from jobs_app.channels import Channel, Outgoing


class PollChannel(Channel):
    name = "poll"

    def push(self, batch: list[Outgoing]) -> None:
        return None
