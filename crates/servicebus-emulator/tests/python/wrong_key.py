"""A client signing with the wrong shared access key must be refused (put-token gets 401).

Usage: wrong_key.py <connection string with a wrong key> <queue name>
"""
import sys

from _emu import emu_kwargs
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusAuthenticationError, ServiceBusError

conn_str, queue = sys.argv[1], sys.argv[2]

with ServiceBusClient.from_connection_string(conn_str, **emu_kwargs(), retry_total=0) as client:
    try:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(ServiceBusMessage("should not be accepted"))
    except ServiceBusAuthenticationError as e:
        print("wrong_key: refused as expected:", type(e).__name__)
    except ServiceBusError as e:
        raise SystemExit(f"wrong_key: expected an authentication error, got {type(e).__name__}: {e}")
    else:
        raise SystemExit("wrong_key: the send was accepted with a wrong key")
print("wrong_key: ok")
