<?php

declare(strict_types=1);

namespace Pier\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Pier\Exception\ProtocolException;
use Pier\Internal\Access;
use Pier\Internal\MemoryRelay;
use Pier\Tcp\TcpWorker;
use Pier\Tests\Vectors;

/**
 * Server push against an in-memory relay: each method's command frame, their order before the answer,
 * and what is refused.
 */
final class PushTest extends TestCase
{
    /**
     * @return array{TcpWorker, MemoryRelay}
     */
    private static function pending(bool $hasPush = true): array
    {
        $relay = new MemoryRelay([Vectors::bytes('server_event_data')]);
        $tcp = new TcpWorker(Access::worker($relay, false, $hasPush));
        self::assertNotNull($tcp->waitRequest());

        return [$tcp, $relay];
    }

    private static function command(string $header, string $data = ''): string
    {
        return Vectors::frame(0x08, [\strlen($header)], $header . $data);
    }

    public function testEachMethodWritesOneCommandFrameInOrderBeforeTheAnswer(): void
    {
        [$tcp, $relay] = self::pending();
        $me = Vectors::UUID;

        $tcp->send('peer', "\x00bin\xff");
        $tcp->join('lobby');
        $tcp->join('vip', 'peer');
        $tcp->leave('lobby');
        $tcp->broadcast("hi\r\n");
        $tcp->broadcast("room\r\n", 'lobby', ['peer']);
        $tcp->disconnect('peer');
        $tcp->respond("ok\r\n");

        self::assertSame([
            self::command('{"op":"send","uuid":"peer"}', "\x00bin\xff"),
            self::command("{\"op\":\"join\",\"uuid\":\"{$me}\",\"group\":\"lobby\"}"),
            self::command('{"op":"join","uuid":"peer","group":"vip"}'),
            self::command("{\"op\":\"leave\",\"uuid\":\"{$me}\",\"group\":\"lobby\"}"),
            self::command('{"op":"broadcast","server":"' . Vectors::SERVER . '"}', "hi\r\n"),
            self::command('{"op":"broadcast","group":"lobby","except":["peer"]}', "room\r\n"),
            self::command('{"op":"close","uuid":"peer"}'),
            Vectors::frame(0, [5], "WRITEok\r\n"),
        ], $relay->writes());
    }

    /**
     * A push command goes out behind the answers held for a batch, and may find the next event
     * whole: that event is still not taken before the pending request is answered.
     */
    public function testAPushCommandWithTheNextEventBufferedDoesNotAnswerTheRequest(): void
    {
        $relay = new MemoryRelay([Vectors::bytes('server_event_data') . Vectors::bytes('server_event_data')]);
        $tcp = new TcpWorker(Access::worker($relay, false, true));
        self::assertNotNull($tcp->waitRequest());
        $tcp->send('peer', 'x');

        try {
            $tcp->waitRequest();
            self::fail('the next event was taken with the request unanswered');
        } catch (ProtocolException $e) {
            self::assertStringContainsString('has no answer yet', $e->getMessage());
        }
        $tcp->respond("ok\r\n");
        self::assertSame("EHLO example.org\r\n", $tcp->waitRequest()?->body);
        $tcp->respond("ok\r\n");
        self::assertNull($tcp->waitRequest());

        // One write: the command and the first answer were held for the batch.
        self::assertSame([
            self::command('{"op":"send","uuid":"peer"}', 'x') . Vectors::frame(0, [5], "WRITEok\r\n") . Vectors::frame(0, [5], "WRITEok\r\n"),
        ], $relay->writes());
    }

    public function testStringsAreEscapedAsTheExtensionsCodecEscapesThem(): void
    {
        [$tcp, $relay] = self::pending();

        $tcp->join("a/é\"\\\n\u{1}\u{2028}", 'u');

        self::assertSame([self::command("{\"op\":\"join\",\"uuid\":\"u\",\"group\":\"a/é\\\"\\\\\\n\\u0001\u{2028}\"}")], $relay->writes());
    }

    public function testWithoutThePushFeatureNothingIsSent(): void
    {
        [$tcp, $relay] = self::pending(false);

        foreach ([fn () => $tcp->send('u', 'x'), fn () => $tcp->broadcast('x'), fn () => $tcp->join('g'), fn () => $tcp->leave('g'), fn () => $tcp->disconnect('u')] as $call) {
            try {
                $call();
                self::fail('no exception');
            } catch (ProtocolException $e) {
                self::assertSame("server push needs a Pier server (PIER_FEATURES has no 'push')", $e->getMessage());
            }
        }
        self::assertSame([], $relay->writes());
    }

    public function testPushAfterTheAnswerIsRefused(): void
    {
        [$tcp, $relay] = self::pending();
        $tcp->read();

        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage('could not send: the request was already answered (push commands go out before the answer)');
        try {
            $tcp->send('u', 'x');
        } finally {
            self::assertCount(1, $relay->writes());
        }
    }
}
