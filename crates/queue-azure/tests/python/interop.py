"""The official Python SDK's half of queue-azure's interop tests.

Usage:
  interop.py send <conn> <queue>                      one message with every property set
  interop.py receive <conn> <queue> <n>               n messages as JSON lines, completed
  interop.py send_sessions <conn> <queue> <sessions> <per>   interleaved "session:i" bodies
  interop.py receive_sessions <conn> <queue> <count> <per>   next-available sessions, JSON
"""
import datetime
import json
import sys

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusClient, ServiceBusMessage


def text(v):
    return v.decode() if isinstance(v, (bytes, bytearray)) else v


def body_bytes(m):
    b = m.body
    if isinstance(b, (bytes, bytearray)):
        return bytes(b)
    return b"".join(bytes(x) for x in b)


def describe(m):
    return {
        "body_hex": body_bytes(m).hex(),
        "message_id": text(m.message_id),
        "correlation_id": text(m.correlation_id),
        "content_type": text(m.content_type),
        "subject": text(m.subject),
        "session_id": text(m.session_id),
        "application_properties": {
            text(k): text(v) for k, v in (m.application_properties or {}).items()
        },
        "ttl_secs": m.time_to_live.total_seconds() if m.time_to_live else None,
        "delivery_count": m.delivery_count,
        "sequence_number": m.sequence_number,
        "has_enqueued_time": m.enqueued_time_utc is not None,
        "has_locked_until": m.locked_until_utc is not None,
    }


def main():
    cmd, conn, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    with ServiceBusClient.from_connection_string(conn) as client:
        if cmd == "send":
            with client.get_queue_sender(queue) as sender:
                sender.send_messages(ServiceBusMessage(
                    b"\x00\x9f\x92\x96 from python",
                    message_id="py-1",
                    correlation_id="corr-py",
                    content_type="application/x-test",
                    subject="py-subject",
                    application_properties={"event": "push", "n": "7"},
                    time_to_live=datetime.timedelta(minutes=10),
                ))
        elif cmd == "receive":
            n = int(sys.argv[4])
            got = []
            with client.get_queue_receiver(queue, max_wait_time=5) as r:
                while len(got) < n:
                    batch = r.receive_messages(max_message_count=n - len(got), max_wait_time=5)
                    if not batch:
                        raise SystemExit(f"expected {n} messages, got {len(got)}")
                    for m in batch:
                        got.append(describe(m))
                        r.complete_message(m)
            for g in got:
                print(json.dumps(g))
        elif cmd == "send_sessions":
            sessions, per = sys.argv[4].split(","), int(sys.argv[5])
            with client.get_queue_sender(queue) as sender:
                batch = sender.create_message_batch()
                for i in range(per):
                    for s in sessions:
                        batch.add_message(ServiceBusMessage(f"{s}:{i}", session_id=s))
                sender.send_messages(batch)
        elif cmd == "receive_sessions":
            count, per = int(sys.argv[4]), int(sys.argv[5])
            out = {}
            for _ in range(count):
                with client.get_queue_receiver(
                        queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5) as r:
                    sid = r.session.session_id
                    bodies = []
                    while len(bodies) < per:
                        batch = r.receive_messages(max_message_count=per - len(bodies),
                                                   max_wait_time=5)
                        if not batch:
                            raise SystemExit(f"session {sid}: got {len(bodies)} of {per}")
                        for m in batch:
                            assert m.session_id == sid, (m.session_id, sid)
                            bodies.append(str(m))
                            r.complete_message(m)
                    out[sid] = bodies
            print(json.dumps(out))
        else:
            raise SystemExit(f"unknown command {cmd}")


main()
