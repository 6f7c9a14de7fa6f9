"""A receiver must match the entity: a plain receiver on a queue that requires sessions and a
session receiver on a queue without sessions are refused (amqp:not-allowed, surfaced as a
non-retried ServiceBusError), and the refused plain receiver locks no session.

Usage: receiver_kinds.py <connection string> <session queue> <plain queue>
"""
import sys

from _emu import emu_kwargs
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError

conn_str, session_queue, plain_queue = sys.argv[1], sys.argv[2], sys.argv[3]


def refused(receiver, words):
    try:
        with receiver as r:
            r.receive_messages(max_message_count=1, max_wait_time=2)
    except ServiceBusError as e:
        text = str(e)
        assert "not-allowed" in text or "NotAllowed" in text, text
        assert words in text, text
        return
    raise AssertionError(f"receiver was not refused ({words})")


with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs(), retry_total=0) as client:
    with client.get_queue_sender(session_queue) as sender:
        sender.send_messages(ServiceBusMessage("v", session_id="g"))

    refused(client.get_queue_receiver(session_queue), "requires sessions")
    for sid in (NEXT_AVAILABLE_SESSION, "g"):
        refused(client.get_queue_receiver(plain_queue, session_id=sid), "does not require sessions")

    # The refused plain receiver did not take the session: it is available at once.
    with client.get_queue_receiver(session_queue, session_id=NEXT_AVAILABLE_SESSION,
                                   max_wait_time=5) as r:
        assert r.session.session_id == "g", r.session.session_id
        got = r.receive_messages(max_message_count=1, max_wait_time=5)
        assert [str(m) for m in got] == ["v"], [str(m) for m in got]
        r.complete_message(got[0])

print("ok")
