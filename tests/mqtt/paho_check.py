#!/usr/bin/env python3
"""Drives examples/mqtt with a second client library, Eclipse Paho (Debian python3-paho-mqtt 1.6).

Usage: paho_check.py PORT. Prints one "ok <what>" line per check and exits 0, or fails with a
message saying what was not seen. Every wait is bounded (the suite's IO_TIMEOUT is longer).
"""

import queue
import socket
import struct
import sys
import time

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
PORT = int(sys.argv[1])
WAIT = 20.0


def client(client_id, clean=True, keepalive=60, will=None):
    """A connected Paho client with its loop running; messages go to client.inbox."""
    c = mqtt.Client(client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
    c.inbox = queue.Queue()
    c.connected = queue.Queue()
    c.on_message = lambda _c, _u, m: c.inbox.put((m.topic, m.payload, m.qos, m.retain))
    c.on_connect = lambda _c, _u, flags, rc: c.connected.put((flags.get("session present", 0), rc))
    c.unsubscribed = queue.Queue()
    c.on_unsubscribe = lambda _c, _u, mid: c.unsubscribed.put(mid)
    c.granted = queue.Queue()
    c.on_subscribe = lambda _c, _u, mid, qos: c.granted.put((mid, list(qos)))
    if will:
        c.will_set(*will)
    c.connect(HOST, PORT, keepalive)
    c.loop_start()
    present, rc = c.connected.get(timeout=WAIT)
    assert rc == 0, f"{client_id}: CONNACK code {rc}"
    c.session_present = present
    return c


def subscribe(c, *filters):
    """Subscribes and waits for the SUBACK; returns the granted QoS per filter."""
    result, mid = c.subscribe(list(filters))
    assert result == mqtt.MQTT_ERR_SUCCESS
    got_mid, granted = c.granted.get(timeout=WAIT)
    assert got_mid == mid
    return granted


def expect(c, want, what):
    got = c.inbox.get(timeout=WAIT)
    assert got == want, f"{what}: got {got!r}, want {want!r}"
    print(f"ok {what}", flush=True)


def nothing(c, what, wait=1.0):
    try:
        got = c.inbox.get(timeout=wait)
    except queue.Empty:
        print(f"ok {what}", flush=True)
        return
    raise AssertionError(f"{what}: got {got!r}")


def main():
    # Paho pings within keepalive + 1 s (its loop wakes once a second): 4 s stays well inside the
    # broker's 6 s, so this subscriber must never be closed for silence.
    sub = client("paho-sub", keepalive=4)
    granted = subscribe(sub, ("paho/+/x", 1), ("paho/will", 0), ("paho/retained/#", 2))
    assert granted == [1, 0, 1], f"granted QoS {granted}"
    print("ok suback grants QoS 1, 0 and 1 (for 2)", flush=True)

    pub = client("paho-pub")
    pub.publish("paho/1/x", b"\x00binary\xff", qos=1).wait_for_publish()
    expect(sub, ("paho/1/x", b"\x00binary\xff", 1, 0), "QoS 1 publish arrives at QoS 1, binary payload intact")
    pub.publish("paho/2/x", b"zero", qos=0)
    expect(sub, ("paho/2/x", b"zero", 0, 0), "QoS 0 publish arrives")
    pub.publish("paho/1/y", b"no", qos=1).wait_for_publish()
    nothing(sub, "a topic the filter does not match is not delivered")

    pub.publish("paho/retained/a", b"kept", qos=1, retain=True).wait_for_publish()
    expect(sub, ("paho/retained/a", b"kept", 1, 0), "a retained publish reaches current subscribers without RETAIN")
    late = client("paho-late")
    subscribe(late, ("paho/retained/+", 1))
    expect(late, ("paho/retained/a", b"kept", 1, 1), "a later subscriber gets the retained message with RETAIN")

    result, mid = sub.unsubscribe("paho/+/x")
    assert result == mqtt.MQTT_ERR_SUCCESS
    assert sub.unsubscribed.get(timeout=WAIT) == mid, "UNSUBACK"
    pub.publish("paho/1/x", b"after", qos=1).wait_for_publish()
    nothing(sub, "after UNSUBSCRIBE nothing arrives")

    # A will: the client's socket dies without DISCONNECT.
    dying = client("paho-dying", will=("paho/will", b"lost", 0, False))
    dying.loop_stop()
    dying.socket().close()
    expect(sub, ("paho/will", b"lost", 0, 0), "the will is published when a client vanishes")

    # Keep-alive: a client that sends CONNECT (keep-alive 2 s) and then nothing is closed after 3 s.
    raw = socket.create_connection((HOST, PORT), timeout=WAIT)
    body = struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", 2) + struct.pack("!H", 6) + b"silent"
    raw.sendall(bytes([0x10, len(body)]) + body)
    began = time.monotonic()
    assert raw.recv(4) == b"\x20\x02\x00\x00", "CONNACK"
    rest = raw.recv(16)
    elapsed = time.monotonic() - began
    assert rest == b"", f"the silent client got {rest!r}"
    assert elapsed >= 2.9, f"closed after {elapsed:.1f} s, before 1.5 x keep-alive"
    print(f"ok a client silent for 1.5 x its keep-alive is closed ({elapsed:.1f} s for 2 s)", flush=True)

    # The subscriber, which pinged all along, is still served.
    pub.publish("paho/will", b"still here", qos=0)
    expect(sub, ("paho/will", b"still here", 0, 0), "the pinging subscriber is still connected")

    for c in (sub, pub, late):
        c.disconnect()
        c.loop_stop()
    print("done", flush=True)


if __name__ == "__main__":
    main()
