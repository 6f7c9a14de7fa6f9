"""The official Python SDK doing the sessions bench's work: per iteration, send <n> messages
of <size> bytes to each of <sessions> sessions (one batch per session), then accept the
sessions one after another (next available) and receive and complete all their messages.
Prints the seconds spent in the iterations (client set-up excluded).

Usage: bench_sdk_sessions.py <conn> <queue> <iters> <sessions> <n> <size>
"""
import sys
import time

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusClient, ServiceBusMessage

conn, queue = sys.argv[1], sys.argv[2]
iters, sessions, n, size = (int(a) for a in sys.argv[3:7])
body = b"x" * size
with ServiceBusClient.from_connection_string(conn) as client, \
        client.get_queue_sender(queue) as sender:
    start = time.perf_counter()
    for it in range(iters):
        for s in range(sessions):
            batch = sender.create_message_batch()
            for _ in range(n):
                batch.add_message(ServiceBusMessage(body, session_id=f"py-{it}-{s}"))
            sender.send_messages(batch)
        for _ in range(sessions):
            with client.get_queue_receiver(
                queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
            ) as receiver:
                got = 0
                while got < n:
                    msgs = receiver.receive_messages(max_message_count=n - got, max_wait_time=5)
                    if not msgs:
                        raise SystemExit(f"stalled at {got} of {n}")
                    for m in msgs:
                        receiver.complete_message(m)
                    got += len(msgs)
    print(time.perf_counter() - start)
