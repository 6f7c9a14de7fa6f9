"""The asyncio flavour of the SDK (`azure.servicebus.aio`), which has its own AMQP transport:
session send and receive, settlement, session state and lock renewal, dead-letter queue.

Usage: async_sessions.py <connection string> <session queue, lock 30 s>
"""
import asyncio
import sys

from _emu import emu_kwargs
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

conn_str, queue = sys.argv[1], sys.argv[2]


async def drain(receiver, n):
    out = []
    while len(out) < n:
        got = await receiver.receive_messages(max_message_count=n - len(out), max_wait_time=5)
        assert got, f"expected {n} messages, got {len(out)}"
        out += got
    return out


async def main():
    async with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs()) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages([ServiceBusMessage(f"o{i}", session_id="order-7")
                                        for i in range(4)])

        async with client.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION,
                                             max_wait_time=10) as receiver:
            session = receiver.session
            assert session.session_id == "order-7", session.session_id
            msgs = await drain(receiver, 4)
            assert [str(m) for m in msgs] == ["o0", "o1", "o2", "o3"], [str(m) for m in msgs]
            await receiver.complete_message(msgs[0])
            await receiver.abandon_message(msgs[1])
            await receiver.dead_letter_message(msgs[2], reason="async-reason",
                                               error_description="async-description")
            await receiver.complete_message(msgs[3])
            again = await drain(receiver, 1)
            assert str(again[0]) == "o1" and again[0].delivery_count == 1
            await receiver.complete_message(again[0])

            await session.set_state(b"async-state")
            assert await session.get_state() == b"async-state"
            before = session.locked_until_utc
            await asyncio.sleep(1.0)
            after = await session.renew_lock()
            assert after > before, (after, before)

        async with client.get_queue_receiver(queue,
                                             sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            dead = await drain(dlq, 1)
            assert str(dead[0]) == "o2"
            assert dead[0].dead_letter_reason == "async-reason"
            assert dead[0].dead_letter_error_description == "async-description"
            await dlq.complete_message(dead[0])

    print("async_sessions: ok")


asyncio.run(main())
