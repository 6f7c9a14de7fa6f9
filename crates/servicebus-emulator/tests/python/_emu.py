"""How the scenarios reach the emulator: plaintext (the connection string's
UseDevelopmentEmulator=true), TLS or WebSockets over TLS, trusting the emulator's generated CA
through the SDK's normal `connection_verify` option. Set by tests/python_sdk.rs."""

import os

from azure.servicebus import TransportType


def emu_kwargs():
    mode = os.environ.get("SBEMU_TRANSPORT", "amqp")
    if mode == "amqp":
        return {}
    return {
        "connection_verify": os.environ["SBEMU_CA_FILE"],
        "custom_endpoint_address": os.environ["SBEMU_ENDPOINT"],
        "transport_type": TransportType.AmqpOverWebsocket if mode == "wss" else TransportType.Amqp,
    }
