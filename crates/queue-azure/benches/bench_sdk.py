"""The official Python SDK doing the bench's work: per iteration, send <n> messages of
<size> bytes in one batch, then receive and complete all of them. Prints the seconds spent
in the iterations (client set-up excluded).

Usage: bench_sdk.py <conn> <queue> <iters> <n> <size>
"""
import sys
import time

from azure.servicebus import ServiceBusClient, ServiceBusMessage

conn, queue, iters, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
body = b"x" * size
with ServiceBusClient.from_connection_string(conn) as client, \
        client.get_queue_sender(queue) as sender, \
        client.get_queue_receiver(queue, max_wait_time=5) as receiver:
    # Warm up the links.
    sender.send_messages(ServiceBusMessage(body))
    for m in receiver.receive_messages(max_message_count=1, max_wait_time=5):
        receiver.complete_message(m)
    start = time.perf_counter()
    for _ in range(iters):
        batch = sender.create_message_batch()
        for _ in range(n):
            batch.add_message(ServiceBusMessage(body))
        sender.send_messages(batch)
        got = 0
        while got < n:
            msgs = receiver.receive_messages(max_message_count=n - got, max_wait_time=5)
            if not msgs:
                raise SystemExit(f"stalled at {got} of {n}")
            for m in msgs:
                receiver.complete_message(m)
            got += len(msgs)
    print(time.perf_counter() - start)
