"""Send, batch send, peek-lock receive, complete, abandon and dead-letter against the emulator.

Usage: basic_queue.py <connection string> <queue name>
Expects the documented Service Bus behaviour; exits non-zero on the first mismatch.
"""
import sys
import uuid

from _emu import emu_kwargs
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

conn_str, queue = sys.argv[1], sys.argv[2]
WAIT = 5


def receive_one(receiver):
    got = receiver.receive_messages(max_message_count=1, max_wait_time=WAIT)
    assert len(got) == 1, f"expected one message, got {len(got)}"
    return got[0]


with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs()) as client:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("first", message_id="m-1",
                                               application_properties={"kind": "single"},
                                               content_type="text/plain", correlation_id="c-1"))
        batch = sender.create_message_batch()
        for i in range(3):
            batch.add_message(ServiceBusMessage(f"batch-{i}", message_id=f"b-{i}"))
        sender.send_messages(batch)
        sender.send_messages([ServiceBusMessage("listed-a"), ServiceBusMessage("listed-b")])

    with client.get_queue_receiver(queue) as receiver:
        msg = receive_one(receiver)
        assert str(msg) == "first", str(msg)
        assert msg.message_id == "m-1"
        assert msg.correlation_id == "c-1"
        assert msg.content_type == "text/plain"
        assert msg.application_properties[b"kind"] == b"single", msg.application_properties
        assert isinstance(msg.lock_token, uuid.UUID), msg.lock_token
        assert msg.sequence_number is not None and msg.sequence_number >= 1
        assert msg.enqueued_time_utc is not None
        assert msg.locked_until_utc is not None and msg.locked_until_utc > msg.enqueued_time_utc
        assert msg.delivery_count == 0, msg.delivery_count
        receiver.complete_message(msg)

        bodies = []
        seqs = []
        for _ in range(3):
            m = receive_one(receiver)
            bodies.append(str(m))
            seqs.append(m.sequence_number)
            receiver.complete_message(m)
        assert bodies == ["batch-0", "batch-1", "batch-2"], bodies
        assert seqs == sorted(seqs) and len(set(seqs)) == 3, seqs

        # Abandon: the same message comes back with its delivery count raised by one.
        m = receive_one(receiver)
        assert str(m) == "listed-a", str(m)
        first_token = m.lock_token
        receiver.abandon_message(m)
        again = receive_one(receiver)
        assert str(again) == "listed-a", str(again)
        assert again.delivery_count == 1, again.delivery_count
        assert again.lock_token != first_token
        # Dead-letter with reason and description.
        receiver.dead_letter_message(again, reason="bad-order", error_description="total < 0")

        last = receive_one(receiver)
        assert str(last) == "listed-b"
        receiver.complete_message(last)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []

    with client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        dead = receive_one(dlq)
        assert str(dead) == "listed-a", str(dead)
        assert dead.dead_letter_reason == "bad-order", dead.dead_letter_reason
        assert dead.dead_letter_error_description == "total < 0", dead.dead_letter_error_description
        dlq.complete_message(dead)

print("basic_queue: ok")
