<?php

declare(strict_types=1);

/*
 * The MQTT example's worker: an MQTT 3.1.1 broker (see Mqtt.php and README.md). Pier frames the
 * packets (framing mode varint: the fixed header byte, then the remaining length), so every DATA
 * event is one whole MQTT packet. Other connections are reached through Pier's server push: groups
 * (one per topic filter) and broadcast for QoS 0, send for QoS 1, disconnect for a client id taken
 * over; the keep-alive is Pier's per-connection idle timeout.
 *
 *   MQTT_STORE    the SQLite file all workers share (default: examples/mqtt/var/broker.sqlite)
 *   MQTT_TRACE=1  one stderr line per packet handled
 */

require __DIR__ . '/../bootstrap.php';
require __DIR__ . '/Mqtt.php';

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpResponse;
use Pier\Tcp\TcpWorker;
use PierExample\Mqtt\Broker;
use PierExample\Mqtt\Outcome;
use PierExample\Mqtt\Store;

$broker = new Broker(new Store(getenv('MQTT_STORE') ?: __DIR__ . '/var/broker.sqlite'));
$trace = getenv('MQTT_TRACE') === '1';
$tcp = TcpWorker::create();

while ($request = $tcp->waitRequest()) {
    $uuid = $request->getConnectionUuid();
    try {
        $outcome = match ($request->getEvent()) {
            TcpEvent::Connected => $broker->connected(),
            TcpEvent::Data => $broker->data($uuid, $request->getBody(), $request->getState()),
            default => $broker->closed($uuid, $request->getState()),
        };
    } catch (\PDOException | \RuntimeException $e) {
        // The store failed (disk full, permissions): this connection cannot be served; CLOSE follows.
        $outcome = Outcome::closing('store error: ' . $e->getMessage());
    }
    if ($outcome->error !== null) {
        fwrite(STDERR, sprintf("mqtt example: closing %s: %s\n", $uuid, $outcome->error));
    }
    if ($trace && $request->getEvent() === TcpEvent::Data) {
        fwrite(STDERR, sprintf("mqtt trace: worker %d: packet type %d from %s, %d pushes\n", getmypid(), ord($request->getBody()[0] ?? "\0") >> 4, $uuid, count($outcome->pushes)));
    }
    foreach ($outcome->pushes as $push) {
        match ($push[0]) {
            'send' => $tcp->send($push[1], $push[2]),
            'broadcast' => $tcp->broadcast($push[1], $push[2], $push[3]),
            'join' => $tcp->join($push[1]),
            'leave' => $tcp->leave($push[1]),
            'disconnect' => $tcp->disconnect($push[1]),
        };
    }
    if ($request->getEvent() === TcpEvent::Close) {
        $tcp->close();
        continue;
    }
    if ($outcome->state !== null) {
        $tcp->setState($outcome->state);
    }
    if ($outcome->idleTimeoutMs !== null) {
        $tcp->setIdleTimeout($outcome->idleTimeoutMs);
    }
    if ($outcome->close) {
        $outcome->reply === '' ? $tcp->close() : $tcp->respond($outcome->reply, TcpResponse::RespondClose);
    } else {
        $outcome->reply === '' ? $tcp->read() : $tcp->respond($outcome->reply);
    }
}
