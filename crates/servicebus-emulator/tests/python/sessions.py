"""Session receivers: named and next-available sessions, FIFO inside a session, exclusive
session locks, session state, session lock renewal and expiry, as documented.

Usage: sessions.py <connection string> <session queue, lock 30 s> <session queue, lock 4 s>
"""
import sys
import threading
import time

from _emu import emu_kwargs
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import (OperationTimeoutError, ServiceBusError,
                                         SessionCannotBeLockedError)

conn_str, queue, short_queue = sys.argv[1], sys.argv[2], sys.argv[3]


def drain(receiver, n, wait=5):
    out = []
    while len(out) < n:
        got = receiver.receive_messages(max_message_count=n - len(out), max_wait_time=wait)
        assert got, f"expected {n} messages, got {len(out)}"
        out += got
    return out


with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs()) as client:
    with client.get_queue_sender(queue) as sender:
        batch = sender.create_message_batch()
        for i in range(3):
            batch.add_message(ServiceBusMessage(f"a{i}", session_id="alpha"))
            batch.add_message(ServiceBusMessage(f"b{i}", session_id="beta"))
        sender.send_messages(batch)

    # Named session: only its messages, in order, with the session id and lock reported.
    with client.get_queue_receiver(queue, session_id="alpha") as alpha:
        session = alpha.session
        assert session.session_id == "alpha"
        assert session.locked_until_utc is not None
        msgs = drain(alpha, 3)
        assert [str(m) for m in msgs] == ["a0", "a1", "a2"], [str(m) for m in msgs]
        assert all(m.session_id == "alpha" for m in msgs)
        for m in msgs:
            alpha.complete_message(m)

        # Exclusive: nobody else may take a locked session.
        try:
            with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs(), retry_total=0) as c2, \
                    c2.get_queue_receiver(queue, session_id="alpha") as other:
                other.receive_messages(max_message_count=1, max_wait_time=1)
        except SessionCannotBeLockedError:
            pass
        else:
            raise SystemExit("a second receiver locked a session that was already locked")

        # Next available skips the locked session and takes the one with messages.
        with client.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION) as nxt:
            assert nxt.session.session_id == "beta", nxt.session.session_id
            beta = drain(nxt, 3)
            assert [str(m) for m in beta] == ["b0", "b1", "b2"]

            # Session state round-trips.
            assert nxt.session.get_state() is None
            nxt.session.set_state(b"checkpoint-1")
            assert nxt.session.get_state() == b"checkpoint-1"

            # Renewal moves the session lock forward.
            before = nxt.session.locked_until_utc
            time.sleep(1.0)
            after = nxt.session.renew_lock()
            assert after > before, (after, before)
            assert nxt.session.locked_until_utc == after
            for m in beta:
                nxt.complete_message(m)

    # With every message settled, no session is available.
    try:
        with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs(), retry_total=0) as c4, \
                c4.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION,
                                      max_wait_time=2) as empty:
            empty.receive_messages(max_message_count=1, max_wait_time=1)
    except (OperationTimeoutError, ServiceBusError):
        pass
    else:
        raise SystemExit("got a session although none had messages")

    # A next-available receiver opened before any session has messages waits for one.
    result = {}

    def wait_for_session():
        try:
            with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs()) as c3, \
                    c3.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION,
                                          max_wait_time=15) as waiting:
                result["session"] = waiting.session.session_id
                got = drain(waiting, 1)
                result["body"] = str(got[0])
                waiting.complete_message(got[0])
        except Exception as e:  # reported by the main thread
            result["error"] = repr(e)

    t = threading.Thread(target=wait_for_session)
    t.start()
    time.sleep(2.0)
    assert t.is_alive(), f"the waiting receiver gave up early: {result}"
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage("d0", session_id="delta"))
    t.join(30)
    assert not t.is_alive(), "the waiting receiver never got the session"
    assert result == {"session": "delta", "body": "d0"}, result

    # Session lock expiry hands the session (and its unsettled message) to another receiver;
    # the session state persists.
    with client.get_queue_sender(short_queue) as sender:
        sender.send_messages(ServiceBusMessage("g0", session_id="gamma"))
    holder = client.get_queue_receiver(short_queue, session_id="gamma")
    holder.__enter__()
    got = drain(holder, 1)
    holder.session.set_state(b"gamma-state")
    time.sleep(4.5)  # lock duration is 4 s; the holder neither renews nor settles
    with client.get_queue_receiver(short_queue, session_id="gamma") as taker:
        again = drain(taker, 1)
        assert str(again[0]) == "g0"
        assert again[0].delivery_count == 1, again[0].delivery_count
        assert taker.session.get_state() == b"gamma-state"
        taker.complete_message(again[0])
    try:
        holder.__exit__(None, None, None)
    except ServiceBusError:
        pass

print("sessions: ok")
