<?php

declare(strict_types=1);

namespace Pier\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Pier\Exception\ProtocolException;
use Pier\Exception\RelayException;
use Pier\Internal\Access;
use Pier\Internal\Frame;
use Pier\Internal\MemoryRelay;
use Pier\Internal\Session;
use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpRequest;
use Pier\Tcp\TcpResponse;
use Pier\Tcp\TcpWorker;
use Pier\Tests\Vectors;

/**
 * The worker against an in-memory relay: what it returns for the server's bytes, and what it writes.
 */
final class TcpWorkerTest extends TestCase
{
    /**
     * @param list<string> $chunks the server's bytes, as successive reads return them
     *
     * @return array{TcpWorker, MemoryRelay}
     */
    private static function worker(array $chunks, bool $hasState = false): array
    {
        $relay = new MemoryRelay($chunks);

        return [new TcpWorker(Access::worker($relay, $hasState)), $relay];
    }

    /**
     * A worker holding one pending request.
     *
     * @return array{TcpWorker, MemoryRelay}
     */
    private static function pending(string $event = 'DATA', string $body = "x\r\n", bool $hasState = false): array
    {
        [$tcp, $relay] = self::worker([Vectors::event($event, $body)], $hasState);
        self::assertNotNull($tcp->waitRequest());

        return [$tcp, $relay];
    }

    /**
     * @return iterable<string, array{string, string, string}>
     */
    public static function serverEvents(): iterable
    {
        yield from Vectors::events();
    }

    /**
     * @dataProvider serverEvents
     */
    public function testEachServerEventVectorBecomesItsRequest(string $vector, string $event, string $body): void
    {
        [$tcp] = self::worker([Vectors::bytes($vector)]);

        $request = $tcp->waitRequest();

        self::assertEquals(
            new TcpRequest(Vectors::REMOTE_ADDR, TcpEvent::from($event), $body, Vectors::UUID, Vectors::SERVER, ''),
            $request,
        );
    }

    public function testThePidHandshakeIsAnsweredInsideWaitRequest(): void
    {
        [$tcp, $relay] = self::worker([Vectors::bytes('server_pid_request'), Vectors::bytes('server_event_connected')]);

        $request = $tcp->waitRequest();

        self::assertSame(TcpEvent::Connected, $request?->getEvent());
        self::assertSame([Vectors::frame(0x01, [], '{"pid":' . getmypid() . '}')], $relay->writes());
    }

    public function testFramesSplitAnyWayAcrossReadsGiveTheSameRequests(): void
    {
        $bytes = Vectors::bytes('server_pid_request') . Vectors::bytes('server_event_connected')
            . Vectors::bytes('server_event_data') . Vectors::bytes('server_event_close');
        [$tcp] = self::worker(str_split($bytes, 1));

        $seen = [];
        for ($i = 0; $i < 3; ++$i) {
            $request = $tcp->waitRequest();
            self::assertNotNull($request);
            $seen[] = [$request->event, $request->body];
            $tcp->read();
        }

        self::assertSame([[TcpEvent::Connected, ''], [TcpEvent::Data, "EHLO example.org\r\n"], [TcpEvent::Close, '']], $seen);
        self::assertNull($tcp->waitRequest());
    }

    public function testSeveralFramesInOneReadAreAllReturned(): void
    {
        [$tcp] = self::worker([Vectors::event('DATA', "a\n") . Vectors::event('DATA', "b\n") . Vectors::event('DATA', "c\n")]);

        $bodies = [];
        while (($request = $tcp->waitRequest()) !== null) {
            $bodies[] = $request->getBody();
            $tcp->read();
        }

        self::assertSame(["a\n", "b\n", "c\n"], $bodies);
    }

    public function testAnEventWithFlagsOtherThanControlIsAnEventAloneAndInABatch(): void
    {
        // The server's events have flags 0; any frame without the control bit is an event too.
        $context = json_encode(['remote_addr' => Vectors::REMOTE_ADDR, 'server' => Vectors::SERVER, 'uuid' => Vectors::UUID, 'event' => 'DATA'], JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES);
        $flagged = static fn (string $body): string => Vectors::frame(Frame::CODEC_JSON, [\strlen($context)], $context . $body);
        [$tcp, $relay] = self::worker([$flagged("a\n"), Vectors::event('DATA', "b\n") . $flagged("c\n") . Vectors::event('DATA', "d\n") . $flagged("e\n")]);

        $bodies = [];
        while (($request = $tcp->waitRequest()) !== null) {
            $bodies[] = $request->getBody();
            $tcp->respond(strtoupper($request->getBody()));
        }

        self::assertSame(["a\n", "b\n", "c\n", "d\n", "e\n"], $bodies);
        self::assertSame(
            [Vectors::frame(0, [5], "WRITEA\n"), implode('', array_map(static fn (string $b): string => Vectors::frame(0, [5], "WRITE{$b}\n"), ['B', 'C', 'D', 'E']))],
            $relay->writes(),
        );
    }

    /**
     * @return iterable<string, array{\Closure(TcpWorker): void, string}>
     */
    public static function answers(): iterable
    {
        yield 'respond' => [static fn (TcpWorker $t) => $t->respond("hello\r\n"), 'worker_respond_write_hello'];
        yield 'respond close' => [static fn (TcpWorker $t) => $t->respond("goodbye\r\n", TcpResponse::RespondClose), 'worker_respond_writeclose_bye'];
        yield 'read' => [static fn (TcpWorker $t) => $t->read(), 'worker_read_continue'];
        yield 'close' => [static fn (TcpWorker $t) => $t->close(), 'worker_close'];
        yield 'error' => [static fn (TcpWorker $t) => $t->getWorker()->error('boom'), 'worker_error'];
        yield 'stop' => [static fn (TcpWorker $t) => $t->getWorker()->stop(), 'worker_stop'];
        yield 'binary' => [static fn (TcpWorker $t) => $t->respond("\x00\xff\r\n"), 'worker_respond_binary'];
    }

    /**
     * @dataProvider answers
     *
     * @param \Closure(TcpWorker): void $answer
     */
    public function testEachAnswerIsItsVectorInOneWrite(\Closure $answer, string $vector): void
    {
        [$tcp, $relay] = self::pending();

        $answer($tcp);

        self::assertSame([Vectors::bytes($vector)], $relay->writes());
    }

    public function testRespondWithReadAndCloseSendsTheirContexts(): void
    {
        [$tcp, $relay] = self::pending();
        $tcp->respond('', TcpResponse::Read);
        self::assertSame([Vectors::bytes('worker_read_continue')], $relay->writes());

        [$tcp, $relay] = self::pending();
        $tcp->respond('', TcpResponse::Close);
        self::assertSame([Vectors::bytes('worker_close')], $relay->writes());
    }

    public function testTheStopRequestEndsTheLoopWithoutAStrayReply(): void
    {
        [$tcp, $relay] = self::worker([Vectors::bytes('server_stop'), Vectors::bytes('server_event_data')]);

        self::assertNull($tcp->waitRequest());
        self::assertNull($tcp->waitRequest(), 'a stopped worker stays stopped');
        self::assertSame([], $relay->writes());
    }

    public function testEndOfTheRelayBetweenFramesEndsTheLoop(): void
    {
        [$tcp, $relay] = self::worker([Vectors::bytes('server_event_data')]);
        self::assertNotNull($tcp->waitRequest());
        $tcp->read();

        self::assertNull($tcp->waitRequest());
        self::assertCount(1, $relay->writes());
    }

    /**
     * @return iterable<string, array{string}>
     */
    public static function truncations(): iterable
    {
        $frame = Vectors::bytes('server_event_data');
        yield 'inside the header' => [substr($frame, 0, 7)];
        yield 'inside the payload' => [substr($frame, 0, -1)];
    }

    /**
     * @dataProvider truncations
     */
    public function testEndOfTheRelayInsideAFrameIsARelayError(string $bytes): void
    {
        [$tcp] = self::worker([$bytes]);

        $this->expectException(RelayException::class);
        $this->expectExceptionMessage('closed in the middle');

        $tcp->waitRequest();
    }

    public function testACorruptFrameIsAProtocolError(): void
    {
        [$tcp] = self::worker([substr_replace(Vectors::bytes('server_event_data'), "\xff", 7, 1)]);

        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage('checksum');

        $tcp->waitRequest();
    }

    /**
     * @return iterable<string, array{string, string}>
     */
    public static function brokenEvents(): iterable
    {
        $options = static fn (int $n, int $payload): string => "could not read a TCP event: {$n} options for a {$payload}-byte payload (expected context length [, state length])";
        yield 'context is not JSON' => [Vectors::frame(0, [3], 'abcdef'), 'could not read a TCP event: its context is not JSON'];
        yield 'context misses a key' => [Vectors::frame(0, [16], '{"event":"DATA"}xyz'), 'could not read a TCP event: its context has no string "remote_addr"'];
        yield 'context longer than payload' => [Vectors::frame(0, [99], '{}'), $options(1, 2)];
        yield 'context one byte longer than payload' => [Vectors::frame(0, [3], '{}'), $options(1, 2)];
        yield 'context and state longer than payload' => [Vectors::frame(0, [2, 1], '{}'), $options(2, 2)];
        yield 'no options' => [Vectors::frame(0, [], '{}'), $options(0, 2)];
        yield 'three options' => [Vectors::frame(0, [2, 0, 0], '{}'), $options(3, 2)];
    }

    /**
     * @dataProvider brokenEvents
     */
    public function testAnEventThatIsNotATcpEventIsAProtocolError(string $frame, string $message): void
    {
        [$tcp] = self::worker([$frame]);

        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage($message);

        $tcp->waitRequest();
    }

    public function testAControlFrameThatIsNotJsonIsAProtocolError(): void
    {
        [$tcp] = self::worker([Vectors::frame(0x09, [], '{pid')]);

        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage('could not read a control frame');

        $tcp->waitRequest();
    }

    public function testAnUnknownControlCommandIsIgnoredAsTheStockWorkerDoes(): void
    {
        [$tcp, $relay] = self::worker([Vectors::frame(0x09, [], '{"ping":1}'), Vectors::bytes('server_event_close')]);

        self::assertSame(TcpEvent::Close, $tcp->waitRequest()?->event);
        self::assertSame([], $relay->writes());
    }

    public function testAnUnknownEventNameIsUnknown(): void
    {
        [$tcp] = self::worker([Vectors::event('RESET', 'x')]);

        $request = $tcp->waitRequest();

        self::assertSame(TcpEvent::Unknown, $request?->getEvent());
        self::assertSame('x', $request->getBody());
    }

    public function testBodiesAreBinarySafeBothWays(): void
    {
        $body = random_bytes(1 << 20) . "\r\n";
        [$tcp, $relay] = self::worker(str_split(Vectors::event('DATA', $body), 4093));

        $request = $tcp->waitRequest();
        self::assertSame($body, $request?->getBody());
        $tcp->respond($body);

        self::assertSame([Vectors::frame(0, [5], 'WRITE' . $body)], $relay->writes());
    }

    public function testAnsweringBeforeAnyRequestIsAProtocolError(): void
    {
        [$tcp, $relay] = self::worker([]);

        foreach ([static fn () => $tcp->respond('x'), static fn () => $tcp->read(), static fn () => $tcp->close()] as $answer) {
            try {
                $answer();
                self::fail('answered with no request');
            } catch (ProtocolException $e) {
                self::assertStringContainsString('answering before any request', $e->getMessage());
            }
        }
        self::assertSame([], $relay->writes());
    }

    public function testAnsweringTwiceIsAProtocolError(): void
    {
        [$tcp, $relay] = self::pending();
        $tcp->respond('one');

        foreach ([static fn () => $tcp->respond('x'), static fn () => $tcp->read(), static fn () => $tcp->close()] as $answer) {
            try {
                $answer();
                self::fail('answered twice');
            } catch (ProtocolException $e) {
                self::assertStringContainsString('answering twice', $e->getMessage());
            }
        }
        self::assertCount(1, $relay->writes());
    }

    public function testTheAnswersOfEventsReadTogetherLeaveInOneWrite(): void
    {
        [$tcp, $relay] = self::worker([
            Vectors::event('DATA', "a\n") . Vectors::event('DATA', "b\n") . Vectors::event('DATA', "c\n"),
            Vectors::event('DATA', "d\n"),
        ]);

        foreach (["a\n", "b\n", "c\n"] as $body) {
            self::assertSame($body, $tcp->waitRequest()?->body);
            self::assertSame([], $relay->writes(), 'held while the next event is buffered');
            $tcp->respond($body);
        }
        $batch = Vectors::frame(0, [5], "WRITEa\n") . Vectors::frame(0, [5], "WRITEb\n") . Vectors::frame(0, [5], "WRITEc\n");
        self::assertSame([$batch], $relay->writes());

        // A lone event is answered at once.
        self::assertSame("d\n", $tcp->waitRequest()?->body);
        $tcp->respond('D');
        self::assertSame([$batch, Vectors::frame(0, [5], 'WRITED')], $relay->writes());
    }

    public function testHeldAnswersGoOutWithTheStopReplyAndWhenTheServerStops(): void
    {
        [$tcp, $relay] = self::worker([Vectors::event('DATA', "a\n") . Vectors::event('DATA', "b\n")]);
        $tcp->waitRequest();
        $tcp->respond('a');
        self::assertSame([], $relay->writes());
        $tcp->getWorker()->stop();
        self::assertSame([Vectors::frame(0, [5], 'WRITEa') . Vectors::bytes('worker_stop')], $relay->writes());

        [$tcp, $relay] = self::worker([Vectors::event('DATA', "a\n") . Vectors::bytes('server_stop')]);
        $tcp->waitRequest();
        $tcp->respond('a');
        self::assertSame([], $relay->writes());
        self::assertNull($tcp->waitRequest());
        self::assertSame([Vectors::frame(0, [5], 'WRITEa')], $relay->writes());
    }

    public function testErrorAndStopAnswerThePendingRequest(): void
    {
        [$tcp, $relay] = self::pending();
        $tcp->getWorker()->error('boom');

        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage('answering twice');
        try {
            $tcp->respond('late');
        } finally {
            self::assertSame([Vectors::bytes('worker_error')], $relay->writes());
        }
    }

    public function testErrorAndStopAreAlwaysSent(): void
    {
        [$tcp, $relay] = self::worker([]);
        $tcp->getWorker()->error('boom');
        $tcp->getWorker()->stop();
        $tcp->getWorker()->error('boom');

        self::assertSame([Vectors::bytes('worker_error'), Vectors::bytes('worker_stop'), Vectors::bytes('worker_error')], $relay->writes());
    }

    public function testWaitingWithAnUnansweredRequestIsAProtocolError(): void
    {
        [$tcp, $relay] = self::worker([Vectors::bytes('server_event_connected'), Vectors::bytes('server_event_close')]);
        self::assertNotNull($tcp->waitRequest());

        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage('has no answer yet');

        $tcp->waitRequest();
    }

    public function testAFailedWriteIsARelayError(): void
    {
        [$tcp, $relay] = self::pending();
        $relay->breakWrites();

        $this->expectException(RelayException::class);

        $tcp->respond('x');
    }

    public function testSetStateWithoutTheFeatureThrowsAndSendsNothing(): void
    {
        [$tcp, $relay] = self::pending(hasState: false);

        try {
            $tcp->setState('s');
            self::fail('setState worked without the state feature');
        } catch (ProtocolException $e) {
            self::assertSame(Session::NO_STATE_FEATURE, $e->getMessage());
        }
        $tcp->respond("hello\r\n");

        self::assertSame([Vectors::bytes('worker_respond_write_hello')], $relay->writes());
    }

    public function testStateArrivesWithTheEventAndIsAttachedToTheNextAnswer(): void
    {
        $state = "\x00state\xff\r\n";
        [$tcp, $relay] = self::worker([
            Vectors::event('DATA', "hi\r\n", $state),
            Vectors::event('DATA', "again\r\n", 'next'),
            Vectors::event('CLOSE', '', 'last'),
            Vectors::event('DATA', "plain\r\n"),
        ], true);

        $first = $tcp->waitRequest();
        self::assertSame([$state, "hi\r\n"], [$first?->getState(), $first?->body]);
        $tcp->setState('new' . $state);
        $tcp->respond("ok\r\n");

        self::assertSame('next', $tcp->waitRequest()?->state);
        $tcp->setState('');
        $tcp->read();

        self::assertSame('last', $tcp->waitRequest()?->getState());
        $tcp->setState('ignored');
        $tcp->getWorker()->error('boom');

        self::assertSame('', $tcp->waitRequest()?->getState());
        $tcp->close();

        self::assertSame([
            Vectors::frame(0, [5, \strlen($state) + 3], 'WRITEnew' . $state . "ok\r\n"),
            Vectors::frame(0, [8, 0], 'CONTINUE'),
            Vectors::bytes('worker_error'),
            Vectors::bytes('worker_close'),
        ], $relay->writes());
    }

    public function testSetStateNeedsAPendingRequest(): void
    {
        [$tcp, $relay] = self::worker([Vectors::bytes('server_event_data')], true);
        try {
            $tcp->setState('s');
            self::fail('setState worked before any request');
        } catch (ProtocolException $e) {
            self::assertStringContainsString('before any request', $e->getMessage());
        }
        self::assertNotNull($tcp->waitRequest());
        $tcp->read();

        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage('answering twice');

        $tcp->setState('s');
    }

    /**
     * The worker remembers decoded DATA contexts, checked frame headers and encoded reply heads (a hot
     * path): every request and answer must still be exactly its own, across more connections and
     * lengths than those memos hold, with state and TLS facts mixed in.
     */
    public function testManyConnectionsAndLengthsDecodeAndEncodeAsTheirOwn(): void
    {
        $tls = ['version' => 'TLSv1.3', 'cipher' => 'TLS13_AES_128_GCM_SHA256', 'sni' => 'a.example', 'client_subject' => null, 'client_sha256' => null];
        $events = [];
        for ($i = 0; $i < 5000; ++$i) {
            $uuid = sprintf('00000000-0000-4000-8000-%012d', $i % 4500);
            $events[] = [
                $uuid,
                str_repeat('b', $i % 300) . "\n",
                $i % 7 === 0 ? "s{$i}" : '',
                $i % 11 === 0 ? $tls : null,
                $i % 13 === 0 ? 'CLOSE' : 'DATA',
            ];
        }
        $bytes = '';
        foreach ($events as [$uuid, $body, $state, $facts, $event]) {
            $bytes .= Vectors::event($event, $body, $state, $uuid, $facts);
        }
        [$tcp, $relay] = self::worker(str_split($bytes, 65536), true);

        $expected = [];
        foreach ($events as $n => [$uuid, $body, $state, $facts, $event]) {
            $request = $tcp->waitRequest();
            self::assertNotNull($request);
            self::assertSame(
                [$uuid, $body, $state, $facts, $event, Vectors::SERVER, Vectors::REMOTE_ADDR],
                [$request->connectionUuid, $request->body, $request->state, $request->getTls(), $request->event->value, $request->server, $request->remoteAddr],
                "request {$n}",
            );
            $answer = strrev($body);
            if ($n % 5 === 0) {
                $tcp->setState("t{$n}");
                $tcp->respond($answer, TcpResponse::RespondClose);
                $expected[] = Vectors::frame(0, [10, \strlen("t{$n}")], "WRITECLOSEt{$n}" . $answer);
            } else {
                $tcp->respond($answer);
                $expected[] = Vectors::frame(0, [5], 'WRITE' . $answer);
            }
        }
        self::assertNull($tcp->waitRequest());

        self::assertSame(implode('', $expected), implode('', $relay->writes()));
    }

    /**
     * In a batch, respond() takes the next event without another check when it finds it whole
     * (a lead remembered is always a plain event's): pid requests between a batch's events, the
     * same frame twice, are still answered as control frames, in order.
     */
    public function testPidRequestsInsideABatchAreControlFramesEachTime(): void
    {
        $pid = Vectors::bytes('server_pid_request');
        [$tcp, $relay] = self::worker([Vectors::event('DATA', "1\n") . $pid . Vectors::event('DATA', "2\n") . $pid . Vectors::event('DATA', "3\n")]);
        foreach (["1\n", "2\n", "3\n"] as $body) {
            self::assertSame($body, $tcp->waitRequest()?->body);
            $tcp->respond($body);
        }
        self::assertNull($tcp->waitRequest());

        $reply = Vectors::frame(0x01, [], '{"pid":' . getmypid() . '}');
        self::assertSame(
            Vectors::frame(0, [5], "WRITE1\n") . $reply . Vectors::frame(0, [5], "WRITE2\n") . $reply . Vectors::frame(0, [5], "WRITE3\n"),
            implode('', $relay->writes()),
        );
    }

    public function testTheHotPathsCopiesOfSessionsAndFramesConstantsAgree(): void
    {
        $own = (new \ReflectionClass(TcpWorker::class))->getConstants();
        $session = (new \ReflectionClass(Session::class))->getConstants();
        self::assertSame(
            [Session::LEAD_SIZE, Frame::HEADER_SIZE, $session['MAX_HELD'], Session::READY, Session::PENDING, Frame::HEADER_SIZE, $session['SMALL_READ'], $session['SMALL_BATCH'], $session['READ_SIZE']],
            [$own['LEAD_SIZE'], $own['HEADER_SIZE'], $own['MAX_HELD'], $own['READY'], $own['PENDING'], $session['HEADER_SIZE'], $own['SMALL_READ'], $own['SMALL_BATCH'], $own['READ_SIZE']],
        );
    }
}
