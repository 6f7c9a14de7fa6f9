// Everyday Service Bus scenarios with the official JavaScript SDK (@azure/service-bus, on
// rhea), run by `node --test` against the emulator binary (tests/js_sdk.rs starts it).
//
// SBEMU_CONN: the connection string (plaintext with UseDevelopmentEmulator=true, or TLS
// `Endpoint=sb://localhost:<port>/` trusted through NODE_EXTRA_CA_CERTS).
// SBEMU_WS=1: AMQP over WebSockets (the `ws` package), also TLS.
// Queues (see tests/js_sdk.rs): basic, peek, sched, renew, batch, plain, sessions, sessions2.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { ServiceBusClient, isServiceBusError } from "@azure/service-bus";
import WebSocket from "ws";

const conn = process.env.SBEMU_CONN;
assert.ok(conn, "SBEMU_CONN is not set");
const options = { retryOptions: { maxRetries: 0, timeoutInMs: 10_000 } };
if (process.env.SBEMU_WS === "1") {
  options.webSocketOptions = { webSocket: WebSocket };
}
const client = new ServiceBusClient(conn, options);
after(() => client.close());

const WAIT = { maxWaitTimeInMs: 5_000 };
const FAST_MS = 15_000; // a refused send must fail well within this

async function receiveExactly(receiver, n) {
  const got = [];
  while (got.length < n) {
    const more = await receiver.receiveMessages(n - got.length, WAIT);
    assert.ok(more.length > 0, `expected ${n} messages, got ${got.length}`);
    got.push(...more);
  }
  return got;
}

test("send, receive, complete, abandon, dead-letter and read the DLQ", async () => {
  const sender = client.createSender("basic");
  await sender.sendMessages({ body: "first", messageId: "m-1", applicationProperties: { kind: "single" } });
  const receiver = client.createReceiver("basic");
  let [m] = await receiveExactly(receiver, 1);
  assert.equal(m.body, "first");
  assert.equal(m.messageId, "m-1");
  assert.equal(m.applicationProperties.kind, "single");
  assert.equal(m.deliveryCount, 0);
  await receiver.abandonMessage(m);
  [m] = await receiveExactly(receiver, 1);
  assert.equal(m.deliveryCount, 1, "abandon counts a delivery");
  await receiver.deadLetterMessage(m, { deadLetterReason: "bad", deadLetterErrorDescription: "cannot parse" });
  const dlq = client.createReceiver("basic", { subQueueType: "deadLetter" });
  const [dead] = await receiveExactly(dlq, 1);
  assert.equal(dead.body, "first");
  assert.equal(dead.deadLetterReason, "bad");
  assert.equal(dead.deadLetterErrorDescription, "cannot parse");
  await dlq.completeMessage(dead);
  await sender.sendMessages({ body: "second" });
  [m] = await receiveExactly(receiver, 1);
  await receiver.completeMessage(m);
  assert.equal((await receiver.receiveMessages(1, { maxWaitTimeInMs: 500 })).length, 0);
  await Promise.all([receiver.close(), dlq.close(), sender.close()]);
});

test("batch send", async () => {
  const sender = client.createSender("batch");
  const batch = await sender.createMessageBatch();
  assert.equal(batch.maxSizeInBytes, 256 * 1024, "Standard tier limit advertised");
  for (let i = 0; i < 5; i++) assert.ok(batch.tryAddMessage({ body: `b-${i}` }));
  await sender.sendMessages(batch);
  await sender.sendMessages([{ body: "l-0" }, { body: "l-1" }]);
  const receiver = client.createReceiver("batch", { receiveMode: "receiveAndDelete" });
  const got = await receiveExactly(receiver, 7);
  assert.deepEqual(got.map((m) => m.body), ["b-0", "b-1", "b-2", "b-3", "b-4", "l-0", "l-1"]);
  await Promise.all([receiver.close(), sender.close()]);
});

test("peek and scheduled message state", async () => {
  const sender = client.createSender("peek");
  await sender.sendMessages({ body: "now" });
  const [seq] = await sender.scheduleMessages({ body: "later" }, new Date(Date.now() + 3_600_000));
  const receiver = client.createReceiver("peek");
  const peeked = await receiver.peekMessages(10);
  const states = Object.fromEntries(peeked.map((m) => [m.body, m.state]));
  assert.deepEqual(states, { now: "active", later: "scheduled" });
  assert.equal(peeked.find((m) => m.body === "later").sequenceNumber.toNumber(), seq.toNumber());
  const [m] = await receiveExactly(receiver, 1);
  assert.equal(m.body, "now", "peek did not lock or remove");
  await receiver.completeMessage(m);
  await Promise.all([receiver.close(), sender.close()]);
});

test("schedule and cancel", async () => {
  const sender = client.createSender("sched");
  const soon = await sender.scheduleMessages({ body: "soon" }, new Date(Date.now() + 1_000));
  const [late] = await sender.scheduleMessages({ body: "late" }, new Date(Date.now() + 1_500));
  await sender.cancelScheduledMessages(late);
  assert.equal(soon.length, 1);
  const receiver = client.createReceiver("sched");
  assert.equal((await receiver.receiveMessages(1, { maxWaitTimeInMs: 300 })).length, 0, "not before its time");
  const [m] = await receiveExactly(receiver, 1);
  assert.equal(m.body, "soon");
  await receiver.completeMessage(m);
  await new Promise((r) => setTimeout(r, 1_000));
  assert.equal((await receiver.receiveMessages(1, { maxWaitTimeInMs: 500 })).length, 0, "cancelled stays cancelled");
  await Promise.all([receiver.close(), sender.close()]);
});

test("renew a message lock", async () => {
  const sender = client.createSender("renew");
  await sender.sendMessages({ body: "long job" });
  const receiver = client.createReceiver("renew");
  const [m] = await receiveExactly(receiver, 1);
  const before = m.lockedUntilUtc.getTime();
  await new Promise((r) => setTimeout(r, 1_100));
  const renewed = await receiver.renewMessageLock(m);
  assert.ok(renewed.getTime() > before, `${renewed.toISOString()} not after ${new Date(before).toISOString()}`);
  await receiver.completeMessage(m);
  await Promise.all([receiver.close(), sender.close()]);
});

test("sessions: next available, named, state and lock renewal", async () => {
  const sender = client.createSender("sessions");
  await sender.sendMessages([
    { body: "a-1", sessionId: "a" },
    { body: "a-2", sessionId: "a" },
    { body: "b-1", sessionId: "b" },
  ]);
  const next = await client.acceptNextSession("sessions");
  assert.equal(next.sessionId, "a");
  const got = await receiveExactly(next, 2);
  assert.deepEqual(got.map((m) => m.body), ["a-1", "a-2"]);
  for (const m of got) await next.completeMessage(m);
  await next.setSessionState("checkpoint-2");
  assert.equal(String(await next.getSessionState()), "checkpoint-2");
  const before = next.sessionLockedUntilUtc.getTime();
  await new Promise((r) => setTimeout(r, 1_100));
  const renewed = await next.renewSessionLock();
  assert.ok(renewed.getTime() > before);
  // Another receiver cannot take a locked session.
  await assert.rejects(client.acceptSession("sessions", "a"), (e) => isServiceBusError(e) && e.code === "SessionCannotBeLocked");
  await next.close();
  const named = await client.acceptSession("sessions", "b");
  const [b] = await receiveExactly(named, 1);
  assert.equal(b.body, "b-1");
  assert.equal(b.sessionId, "b");
  await named.completeMessage(b);
  await Promise.all([named.close(), sender.close()]);
});

async function refusedFast(what, fn, check) {
  const started = Date.now();
  await assert.rejects(fn, (e) => {
    assert.ok(isServiceBusError(e) || e.name === "MessagingError", `${what}: ${e}`);
    check(e);
    return true;
  });
  const took = Date.now() - started;
  assert.ok(took < FAST_MS, `${what}: refused only after ${took} ms`);
}

test("refused sends fail fast with the right error", async () => {
  const session = client.createSender("sessions2");
  await refusedFast("session-less message to a session queue", () => session.sendMessages({ body: "x" }), (e) =>
    assert.match(String(e.message), /session/i),
  );
  const plain = client.createSender("plain");
  await refusedFast("oversize message", () => plain.sendMessages({ body: Buffer.alloc(256 * 1024 + 1) }), (e) =>
    assert.equal(e.code, "MessageSizeExceeded"),
  );
  // A plain queue takes a message carrying a session id.
  await plain.sendMessages({ body: "with-session", sessionId: "s-1" });
  const missing = client.createSender("no-such-queue");
  await refusedFast("unknown queue", () => missing.sendMessages({ body: "x" }), (e) =>
    assert.equal(e.code, "MessagingEntityNotFound"),
  );
  const receiver = client.createReceiver("plain");
  const [m] = await receiveExactly(receiver, 1);
  assert.equal(m.sessionId, "s-1");
  await receiver.completeMessage(m);
  await Promise.all([receiver.close(), session.close(), plain.close(), missing.close()]);
});
