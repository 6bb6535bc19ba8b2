<?php

declare(strict_types=1);

namespace PierExample\Mqtt\Tests;

use PHPUnit\Framework\TestCase;
use PierExample\Mqtt\Broker;
use PierExample\Mqtt\MalformedPacket;
use PierExample\Mqtt\Outcome;
use PierExample\Mqtt\Packet;
use PierExample\Mqtt\Reader;
use PierExample\Mqtt\Store;
use PierExample\Mqtt\Topic;

require_once __DIR__ . '/../Mqtt.php';

/**
 * The broker without Pier: events in, outcomes out, against a fresh SQLite store per test. The end-to-end suite (tests/tests/mqtt.rs) runs it under pier with real
 * clients.
 */
final class BrokerTest extends TestCase
{
    private string $dir;
    private Broker $broker;
    /** @var array<string, string> uuid → connection state, as Pier keeps it */
    private array $states = [];

    protected function setUp(): void
    {
        $this->dir = sys_get_temp_dir() . '/pier-mqtt-test-' . bin2hex(random_bytes(6));
        $this->broker = new Broker(new Store($this->dir . '/broker.sqlite'));
    }

    protected function tearDown(): void
    {
        foreach (glob($this->dir . '/*') ?: [] as $file) {
            unlink($file);
        }
        @rmdir($this->dir);
    }

    public static function connectPacket(string $clientId, bool $clean = true, int $keepAlive = 60, ?array $will = null, int $level = 4): string
    {
        $flags = ($clean ? 0x02 : 0);
        $payload = Packet::str($clientId);
        if ($will !== null) {
            $flags |= 0x04 | ($will[2] << 3) | ($will[3] ? 0x20 : 0);
            $payload .= Packet::str($will[0]) . Packet::str($will[1]);
        }
        $body = Packet::str('MQTT') . \chr($level) . \chr($flags) . pack('n', $keepAlive) . $payload;

        return Packet::frame(Packet::CONNECT, 0, $body);
    }

    /** @param list<array{0: string, 1: int}> $filters */
    public static function subscribePacket(int $id, array $filters): string
    {
        $body = pack('n', $id);
        foreach ($filters as [$filter, $qos]) {
            $body .= Packet::str($filter) . \chr($qos);
        }

        return Packet::frame(Packet::SUBSCRIBE, 2, $body);
    }

    /** Runs one DATA event as Pier would, keeping the connection state. */
    private function data(string $uuid, string $packet): Outcome
    {
        $outcome = $this->broker->data($uuid, $packet, $this->states[$uuid] ?? '');
        if ($outcome->state !== null) {
            $this->states[$uuid] = $outcome->state;
        }

        return $outcome;
    }

    private function connect(string $uuid, string $clientId, bool $clean = true, int $keepAlive = 60, ?array $will = null): Outcome
    {
        $o = $this->data($uuid, self::connectPacket($clientId, $clean, $keepAlive, $will));
        self::assertSame(0, \ord($o->reply[3]), 'CONNACK accepted');

        return $o;
    }

    private function close(string $uuid): Outcome
    {
        $o = $this->broker->closed($uuid, $this->states[$uuid] ?? '');
        unset($this->states[$uuid]);

        return $o;
    }

    public function testTopicMatchingFollowsTheSpecExamples(): void
    {
        $cases = [
            ['sport/tennis/player1/#', 'sport/tennis/player1', true],
            ['sport/tennis/player1/#', 'sport/tennis/player1/ranking', true],
            ['sport/tennis/player1/#', 'sport/tennis/player1/score/wimbledon', true],
            ['sport/#', 'sport', true],
            ['#', 'anything/at/all', true],
            ['sport/tennis/+', 'sport/tennis/player1', true],
            ['sport/tennis/+', 'sport/tennis/player1/ranking', false],
            ['sport/+', 'sport', false],
            ['sport/+', 'sport/', true],
            ['+/+', '/finance', true],
            ['/+', '/finance', true],
            ['+', '/finance', false],
            ['#', '$SYS/broker', false],
            ['+/monitor/Clients', '$SYS/monitor/Clients', false],
            ['$SYS/#', '$SYS/broker', true],
            ['a/b', 'a/b', true],
            ['a/b', 'a/c', false],
        ];
        foreach ($cases as [$filter, $topic, $want]) {
            self::assertTrue(Topic::validFilter($filter), $filter);
            self::assertSame($want, Topic::matches($filter, $topic), "{$filter} vs {$topic}");
        }
        foreach (['', 'a/#/b', 'a#', 'a/b+', '+a/b', '##'] as $bad) {
            self::assertFalse(Topic::validFilter($bad), $bad);
        }
        self::assertFalse(Topic::validName('a/+'));
        self::assertFalse(Topic::validName(''));
        self::assertTrue(Topic::validName('a/b c/ü'));
    }

    public function testRemainingLengthEncodingAndDecoding(): void
    {
        $cases = [0 => "\x00", 127 => "\x7f", 128 => "\x80\x01", 16383 => "\xff\x7f", 16384 => "\x80\x80\x01", 268435455 => "\xff\xff\xff\x7f"];
        foreach ($cases as $n => $bytes) {
            self::assertSame($bytes, Packet::varint($n), (string) $n);
        }
        $r = new Reader(Packet::frame(Packet::PUBLISH, 0, str_repeat('x', 200)));
        self::assertSame(Packet::PUBLISH, $r->type);
        self::assertSame(200, \strlen($r->rest()));
        $this->expectException(MalformedPacket::class);
        new Reader("\x30\x05ab");
    }

    public function testConnectIsCheckedAndAnsweredWithConnack(): void
    {
        $o = $this->data('u1', self::connectPacket('c1'));
        self::assertSame("\x20\x02\x00\x00", $o->reply);
        self::assertFalse($o->close);

        $o = $this->data('u2', self::connectPacket('c2', level: 3));
        self::assertSame("\x20\x02\x00\x01", $o->reply, 'unacceptable protocol level');
        self::assertTrue($o->close);

        $o = $this->data('u3', self::connectPacket('', clean: false));
        self::assertSame("\x20\x02\x00\x02", $o->reply, 'identifier rejected');
        self::assertTrue($o->close);

        $o = $this->data('u4', Packet::frame(Packet::PINGREQ, 0, ''));
        self::assertTrue($o->close, 'the first packet must be CONNECT');
        self::assertSame('', $o->reply);

        $o = $this->data('u1', self::connectPacket('c1'));
        self::assertTrue($o->close, 'a second CONNECT is a protocol violation');

        $o = $this->data('u5', self::connectPacket(''));
        self::assertSame("\x20\x02\x00\x00", $o->reply, 'an empty id with clean session gets one assigned');
    }

    public function testQos0FansOutAsOneBroadcastPerFilterGroupAndOneCopyPerSubscriber(): void
    {
        $this->connect('pub', 'publisher');
        $this->connect('s1', 'one');
        $this->connect('s2', 'two');
        $o = $this->data('s1', self::subscribePacket(7, [['a/+', 0], ['a/#', 0]]));
        self::assertSame("\x90\x04\x00\x07\x00\x00", $o->reply, 'SUBACK granting QoS 0 twice');
        self::assertSame([['join', Topic::group('a/+')], ['join', Topic::group('a/#')]], $o->pushes);
        $this->data('s2', self::subscribePacket(1, [['a/#', 0]]));

        $o = $this->data('pub', Packet::publish('a/b', 'hi', 0, false));
        self::assertSame('', $o->reply, 'QoS 0 gets no acknowledgement');
        $copy = Packet::publish('a/b', 'hi', 0, false);
        // a/# holds s1 and s2; a/+ holds s1 only, who is served already: one broadcast.
        self::assertSame([['broadcast', $copy, Topic::group('a/#'), []]], $o->pushes);

        $o = $this->data('pub', Packet::publish('other', 'x', 0, false));
        self::assertSame([], $o->pushes, 'nobody subscribed');
    }

    public function testQos1IsAcknowledgedAndDeliveredWithEachSubscribersPacketId(): void
    {
        $this->connect('pub', 'publisher');
        $this->connect('s0', 'zero');
        $this->connect('s1', 'one');
        $this->data('s0', self::subscribePacket(1, [['t', 0]]));
        $o = $this->data('s1', self::subscribePacket(1, [['t', 2]]));
        self::assertSame("\x90\x03\x00\x01\x01", $o->reply, 'QoS 2 requested, 1 granted');

        $o = $this->data('pub', Packet::publish('t', 'm1', 1, false, 42));
        self::assertSame("\x40\x02\x00\x2a", $o->reply, 'PUBACK with the packet id');
        self::assertSame([
            ['broadcast', Packet::publish('t', 'm1', 0, false), Topic::group('t'), ['s1']],
            ['send', 's1', Packet::publish('t', 'm1', 1, false, 1)],
        ], $o->pushes);
        $o = $this->data('pub', Packet::publish('t', 'm2', 1, false, 43));
        self::assertSame(['send', 's1', Packet::publish('t', 'm2', 1, false, 2)], $o->pushes[1], 'the next packet id');
        self::assertSame('', $this->data('s1', Packet::ack(Packet::PUBACK, 1))->reply);
    }

    public function testQos2InboundIsDeliveredOnceUntilReleased(): void
    {
        $this->connect('pub', 'publisher');
        $this->connect('s', 'sub');
        $this->data('s', self::subscribePacket(1, [['q2', 1]]));
        $o = $this->data('pub', Packet::publish('q2', 'once', 2, false, 9));
        self::assertSame(Packet::ack(Packet::PUBREC, 9), $o->reply);
        self::assertCount(1, $o->pushes);
        $dup = $this->data('pub', Packet::publish('q2', 'once', 2, false, 9));
        self::assertSame(Packet::ack(Packet::PUBREC, 9), $dup->reply);
        self::assertSame([], $dup->pushes, 'a duplicate before PUBREL is not delivered again');
        $o = $this->data('pub', Packet::ack(Packet::PUBREL, 9));
        self::assertSame(Packet::ack(Packet::PUBCOMP, 9), $o->reply);
        self::assertCount(1, $this->data('pub', Packet::publish('q2', 'again', 2, false, 9))->pushes, 'released: the id is new again');
    }

    public function testRetainedMessagesReachLaterSubscribersAndAnEmptyPayloadClearsThem(): void
    {
        $this->connect('pub', 'publisher');
        $this->data('pub', Packet::publish('home/temp', '21', 1, true, 1));
        $this->data('pub', Packet::publish('home/hum', '40', 0, true));
        $this->connect('s', 'sub');
        $o = $this->data('s', self::subscribePacket(3, [['home/#', 1]]));
        self::assertSame(
            Packet::suback(3, [1]) . Packet::publish('home/hum', '40', 0, true) . Packet::publish('home/temp', '21', 1, true, 1),
            $o->reply,
            'SUBACK, then the retained messages with RETAIN set, each at the lower QoS'
        );
        $this->data('pub', Packet::publish('home/temp', '', 0, true));
        $this->connect('s2', 'sub2');
        $o = $this->data('s2', self::subscribePacket(1, [['home/temp', 0]]));
        self::assertSame(Packet::suback(1, [0]), $o->reply, 'cleared');
    }

    public function testUnsubscribeLeavesTheGroup(): void
    {
        $this->connect('s', 'sub');
        $this->data('s', self::subscribePacket(1, [['x/y', 0]]));
        $o = $this->data('s', Packet::frame(Packet::UNSUBSCRIBE, 2, pack('n', 5) . Packet::str('x/y')));
        self::assertSame("\xb0\x02\x00\x05", $o->reply);
        self::assertSame([['leave', Topic::group('x/y')]], $o->pushes);
        $this->connect('pub', 'publisher');
        self::assertSame([], $this->data('pub', Packet::publish('x/y', 'm', 0, false))->pushes);
    }

    public function testSameClientIdTakesOverAndPersistentSessionsKeepTheirSubscriptions(): void
    {
        $this->connect('old', 'dev', clean: false);
        $this->data('old', self::subscribePacket(1, [['cmd/dev', 1]]));
        $o = $this->connect('new', 'dev', clean: false);
        self::assertSame("\x20\x02\x01\x00", $o->reply, 'session present');
        self::assertSame([['disconnect', 'old'], ['join', Topic::group('cmd/dev')]], $o->pushes);
        // The old connection's CLOSE arrives later and leaves the new one's session alone.
        $this->close('old');
        $this->connect('pub', 'publisher');
        $o = $this->data('pub', Packet::publish('cmd/dev', 'go', 1, false, 1));
        self::assertSame([['send', 'new', Packet::publish('cmd/dev', 'go', 1, false, 1)]], $o->pushes);

        // Offline, the session keeps its subscriptions; a clean session drops them.
        $this->close('new');
        self::assertSame([], $this->data('pub', Packet::publish('cmd/dev', 'go', 1, false, 2))->pushes);
        $o = $this->connect('again', 'dev', clean: false);
        self::assertSame("\x20\x02\x01\x00", $o->reply);
        $this->close('again');
        $o = $this->connect('fresh', 'dev', clean: true);
        self::assertSame("\x20\x02\x00\x00", $o->reply, 'no session present');
        self::assertSame([], $this->data('pub', Packet::publish('cmd/dev', 'go', 0, false))->pushes);
    }

    public function testTheWillIsPublishedOnAnUnexpectedCloseOnly(): void
    {
        $this->connect('w', 'watcher');
        $this->data('w', self::subscribePacket(1, [['status/+', 0]]));
        $this->connect('a', 'dev-a', will: ['status/dev-a', 'gone', 0, true]);
        $this->connect('b', 'dev-b', will: ['status/dev-b', 'gone', 0, false]);

        $o = $this->close('a');
        self::assertSame([['broadcast', Packet::publish('status/dev-a', 'gone', 0, false), Topic::group('status/+'), []]], $o->pushes);
        $o = $this->data('b', Packet::frame(Packet::DISCONNECT, 0, ''));
        self::assertTrue($o->close);
        self::assertSame([], $this->close('b')->pushes, 'DISCONNECT discards the will');
        // The will was retained.
        $this->connect('late', 'late');
        self::assertStringEndsWith(Packet::publish('status/dev-a', 'gone', 0, true), $this->data('late', self::subscribePacket(1, [['status/#', 0]]))->reply);
    }

    public function testTheKeepAliveBecomesTheConnectionsIdleTimeout(): void
    {
        // 1.5 × the keep-alive, in milliseconds; Pier closes the connection after that much silence.
        self::assertSame(15000, $this->connect('a', 'a', keepAlive: 10)->idleTimeoutMs);
        self::assertSame(98302500, $this->connect('b', 'b', keepAlive: 65535)->idleTimeoutMs);
        self::assertNull($this->connect('c', 'c', keepAlive: 0)->idleTimeoutMs, 'keep-alive 0: no timeout of its own');
        self::assertNull($this->data('a', Packet::frame(Packet::PINGREQ, 0, ''))->idleTimeoutMs, 'set once, at CONNECT');
    }

    public function testMalformedPacketsCloseTheConnection(): void
    {
        $this->connect('c', 'client');
        $cases = [
            'SUBSCRIBE flags' => Packet::frame(Packet::SUBSCRIBE, 0, pack('n', 1) . Packet::str('a') . "\x00"),
            'SUBSCRIBE without filters' => Packet::frame(Packet::SUBSCRIBE, 2, pack('n', 1)),
            'QoS 3 request' => Packet::frame(Packet::SUBSCRIBE, 2, pack('n', 1) . Packet::str('a') . "\x03"),
            'PUBLISH QoS 3' => Packet::frame(Packet::PUBLISH, 6, Packet::str('a') . 'x'),
            'PUBLISH to a wildcard' => Packet::publish('a/+', 'x', 0, false),
            'invalid UTF-8 topic' => Packet::publish("a\xff", 'x', 0, false),
            'string past the end' => Packet::frame(Packet::PUBLISH, 0, "\x00\x09ab"),
            'server-only packet' => Packet::frame(Packet::CONNACK, 0, "\x00\x00"),
            'PINGREQ with a body' => Packet::frame(Packet::PINGREQ, 0, 'x'),
        ];
        foreach ($cases as $name => $packet) {
            $o = $this->broker->data('c', $packet, $this->states['c']);
            self::assertTrue($o->close, $name);
            self::assertNotNull($o->error, $name);
        }
        $o = $this->data('c', self::subscribePacket(2, [['ok/#', 0], ['bad/#/x', 0]]));
        self::assertSame(Packet::suback(2, [0, 0x80]), $o->reply, 'an invalid filter is refused, not fatal');
    }
}
