"""Renew lock, schedule (and cancel), peek, lock expiry, max delivery count, TTL expiry,
receive-and-delete and duplicate detection, as documented for Service Bus.

Usage: management.py <connection string> <queue with lock 4 s, max delivery 2, dedup on>
"""
import datetime
import sys
import time

from _emu import emu_kwargs
from azure.servicebus import (ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode,
                              ServiceBusSubQueue)
from azure.servicebus.exceptions import MessageLockLostError

conn_str, queue = sys.argv[1], sys.argv[2]


def receive_one(receiver, wait=5):
    got = receiver.receive_messages(max_message_count=1, max_wait_time=wait)
    assert len(got) == 1, f"expected one message, got {len(got)}"
    return got[0]


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs()) as client:
    sender = client.get_queue_sender(queue)
    receiver = client.get_queue_receiver(queue)
    with sender, receiver:
        # Renew lock: the lock moves forward and the message can still be completed after
        # the original lock time has passed.
        sender.send_messages(ServiceBusMessage("renew-me"))
        msg = receive_one(receiver)
        first_until = msg.locked_until_utc
        time.sleep(2.5)
        new_until = receiver.renew_message_lock(msg)
        assert new_until > first_until, (new_until, first_until)
        assert msg.locked_until_utc == new_until
        time.sleep(2.5)  # past the first lock (4 s), inside the renewed one
        receiver.complete_message(msg)

        # Lock expiry: an unsettled message comes back with its delivery count raised,
        # and the old lock can no longer settle it.
        sender.send_messages(ServiceBusMessage("expire-me"))
        msg = receive_one(receiver)
        time.sleep(4.5)
        again = receive_one(receiver)
        assert str(again) == "expire-me"
        assert again.delivery_count == 1, again.delivery_count
        try:
            receiver.complete_message(msg)
        except MessageLockLostError:
            pass
        else:
            raise SystemExit("completing with an expired lock succeeded")
        # Second failed delivery reaches max delivery count 2: dead-lettered.
        receiver.abandon_message(again)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []

        # Schedule: invisible until due; peek sees it; cancel removes another one.
        due = utcnow() + datetime.timedelta(seconds=8)
        seq = sender.schedule_messages(ServiceBusMessage("scheduled"), due)[0]
        cancel_seq = sender.schedule_messages(ServiceBusMessage("cancelled"),
                                              utcnow() + datetime.timedelta(seconds=8))[0]
        assert seq > 0 and cancel_seq > seq, (seq, cancel_seq)
        sender.cancel_scheduled_messages(cancel_seq)
        peeked = receiver.peek_messages(max_message_count=10)
        assert [str(p) for p in peeked] == ["scheduled"], [str(p) for p in peeked]
        assert peeked[0].sequence_number == seq
        assert peeked[0].scheduled_enqueue_time_utc is not None
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
        got = receive_one(receiver, wait=12)
        assert str(got) == "scheduled" and got.sequence_number == seq
        assert got.enqueued_time_utc >= due - datetime.timedelta(seconds=1)
        receiver.complete_message(got)

        # Peek does not lock, and continues from a sequence number.
        sender.send_messages([ServiceBusMessage(f"p{i}") for i in range(3)])
        first = receiver.peek_messages(max_message_count=2)
        assert [str(p) for p in first] == ["p0", "p1"], [str(p) for p in first]
        rest = receiver.peek_messages(max_message_count=5,
                                      sequence_number=first[-1].sequence_number + 1)
        assert [str(p) for p in rest] == ["p2"], [str(p) for p in rest]
        got = receiver.receive_messages(max_message_count=3, max_wait_time=5)
        while len(got) < 3:
            more = receiver.receive_messages(max_message_count=3 - len(got), max_wait_time=5)
            assert more, "peeked messages were not receivable"
            got += more
        assert [str(m) for m in got] == ["p0", "p1", "p2"]
        for m in got:
            receiver.complete_message(m)

        # TTL: an expired message is never delivered.
        sender.send_messages(ServiceBusMessage("short-lived",
                                               time_to_live=datetime.timedelta(seconds=1)))
        time.sleep(1.5)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []

        # Duplicate detection by message id.
        sender.send_messages(ServiceBusMessage("dup-1", message_id="same-id"))
        sender.send_messages(ServiceBusMessage("dup-2", message_id="same-id"))
        got = receive_one(receiver)
        assert str(got) == "dup-1"
        receiver.complete_message(got)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []

        # update-disposition on $management: the SDK's own fallback when a settlement on the
        # receiver link is not confirmed (called directly here, through its internal helper,
        # so that the request is encoded by the SDK itself).
        sender.send_messages([ServiceBusMessage("mgmt-complete"), ServiceBusMessage("mgmt-dead")])
        a = receive_one(receiver)
        b = receive_one(receiver)
        assert (str(a), str(b)) == ("mgmt-complete", "mgmt-dead")
        receiver._settle_message_via_mgmt_link("completed", [a.lock_token])
        receiver._settle_message_via_mgmt_link(
            "suspended", [b.lock_token],
            dead_letter_details={"deadletter-reason": "via-mgmt",
                                 "deadletter-description": "settled on $management"})
        try:
            receiver._settle_message_via_mgmt_link("completed", [a.lock_token])
        except MessageLockLostError:
            pass
        else:
            raise SystemExit("a lock token was settled twice")
        assert receiver.receive_messages(max_message_count=1, max_wait_time=1) == []

    with client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        dead = receive_one(dlq)
        assert str(dead) == "expire-me"
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded", dead.dead_letter_reason
        dlq.complete_message(dead)
        dead = receive_one(dlq)
        assert str(dead) == "mgmt-dead"
        assert dead.dead_letter_reason == "via-mgmt", dead.dead_letter_reason
        assert dead.dead_letter_error_description == "settled on $management"
        # Peek works on the dead-letter queue's own $management node (locked messages too).
        peeked = dlq.peek_messages(max_message_count=5, sequence_number=dead.sequence_number)
        assert [str(p) for p in peeked] == ["mgmt-dead"], [str(p) for p in peeked]
        dlq.complete_message(dead)
        assert dlq.peek_messages(max_message_count=5, sequence_number=1) == []

    # Receive-and-delete: settled on delivery, gone afterwards.
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("once"))
    with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        got = receive_one(r)
        assert str(got) == "once"
        assert got.lock_token is None
    with client.get_queue_receiver(queue) as r:
        assert r.receive_messages(max_message_count=1, max_wait_time=1) == []

print("management: ok")
