"""Service Bus behaviours the emulator must match, seen through the official Python SDK:
refused sends fail fast with the SDK's error types (the emulator's errors carry an `info` map),
a plain queue accepts messages with a session id, the Standard tier's 256 KiB limit is
advertised and enforced, released (prefetched, never handed out) messages keep their delivery
count, and peeked scheduled messages report state Scheduled.

Usage: fidelity.py <connection string> <session queue> <plain queue>
"""
import datetime
import sys
import time

from _emu import emu_kwargs
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageState
from azure.servicebus.exceptions import MessageSizeExceededError, ServiceBusError

conn_str, session_queue, plain_queue = sys.argv[1], sys.argv[2], sys.argv[3]
FAST = 15  # seconds a refused send may take (it hung forever without the `info` map)
STANDARD_MAX = 256 * 1024


def refused_fast(what, send):
    started = time.monotonic()
    try:
        send()
    except ServiceBusError as e:
        took = time.monotonic() - started
        assert took < FAST, f"{what}: refused only after {took:.1f}s"
        print(f"ok: {what} refused in {took:.1f}s with {type(e).__name__}")
        return e
    raise AssertionError(f"{what}: the send was accepted")


with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs(), retry_total=0) as client:
    # A session-less message to a session queue is refused, quickly.
    with client.get_queue_sender(session_queue) as sender:
        refused_fast("session-less message to a session queue",
                     lambda: sender.send_messages(ServiceBusMessage("no-session"), timeout=5))

    with client.get_queue_sender(plain_queue) as sender:
        # The advertised limit follows the tier (Standard: 256 KiB).
        batch = sender.create_message_batch()
        assert batch.max_size_in_bytes == STANDARD_MAX, batch.max_size_in_bytes
        try:
            sender.send_messages(ServiceBusMessage(b"x" * (STANDARD_MAX + 1)), timeout=5)
            raise AssertionError("an oversize message was accepted")
        except MessageSizeExceededError:
            print("ok: oversize message refused with MessageSizeExceededError")
        # A plain queue takes a message that carries a session id.
        sender.send_messages(ServiceBusMessage("with-session", session_id="s-1"), timeout=5)
        # Three for the prefetch check, one scheduled an hour ahead.
        sender.send_messages([ServiceBusMessage(f"p-{i}") for i in range(3)], timeout=5)
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        (scheduled_seq,) = sender.schedule_messages(ServiceBusMessage("later"), later)

    with client.get_queue_receiver(plain_queue) as receiver:
        peeked = receiver.peek_messages(max_message_count=10)
        states = {str(m): m.state for m in peeked}
        assert states.get("later") == ServiceBusMessageState.SCHEDULED, states
        assert states.get("with-session") == ServiceBusMessageState.ACTIVE, states
        print("ok: peeked scheduled message has state SCHEDULED")
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(m) == "with-session" and m.session_id == "s-1", (str(m), m.session_id)
        receiver.complete_message(m)
        print("ok: plain queue delivered the session-id message with its session id")

    # Prefetched messages the receiver never handed out are released when it closes; that
    # is not a delivery, so their count stays 0.
    with client.get_queue_receiver(plain_queue, prefetch_count=3) as receiver:
        first = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert len(first) == 1, first
        receiver.complete_message(first[0])
        time.sleep(0.5)  # let the prefetch arrive before closing
    with client.get_queue_receiver(plain_queue) as receiver:
        rest = receiver.receive_messages(max_message_count=2, max_wait_time=5)
        while len(rest) < 2:
            more = receiver.receive_messages(max_message_count=2 - len(rest), max_wait_time=5)
            assert more, f"only {len(rest)} of the released messages came back"
            rest += more
        counts = {str(m): m.delivery_count for m in rest}
        assert all(c == 0 for c in counts.values()), counts
        for m in rest:
            receiver.complete_message(m)
        print(f"ok: released messages kept their delivery count {counts}")
print("fidelity: all checks passed")
