<?php

declare(strict_types=1);

namespace Pier\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Pier\Exception\RelayException;
use Pier\Internal\Access;
use Pier\Internal\StreamRelay;
use Pier\Tcp\TcpWorker;
use Pier\Tests\Vectors;

/**
 * The worker over a real stream relay (a socket pair), whose streams Session reads and writes
 * itself on its hot path: the same requests and answers as through any relay, and the relay's own
 * read() and write() for the end of the stream.
 */
final class StreamRelayTest extends TestCase
{
    /**
     * @return array{TcpWorker, resource} the worker and the server's end of the relay
     */
    private static function worker(): array
    {
        $pair = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
        self::assertIsArray($pair);
        [$server, $worker] = $pair;

        return [new TcpWorker(Access::worker(new StreamRelay($worker, $worker), false)), $server];
    }

    /**
     * @param resource $server
     */
    private static function readExactly($server, int $length): string
    {
        $bytes = '';
        while (\strlen($bytes) < $length) {
            $chunk = fread($server, $length - \strlen($bytes));
            self::assertIsString($chunk);
            self::assertNotSame('', $chunk, 'the worker wrote less than expected');
            $bytes .= $chunk;
        }

        return $bytes;
    }

    public function testEventsOneAtATimeAreAnsweredEachInItsWrite(): void
    {
        [$tcp, $server] = self::worker();
        foreach (["a\n", "bb\n", str_repeat('c', 70000) . "\n"] as $body) {
            fwrite($server, Vectors::event('DATA', $body));
            self::assertSame($body, $tcp->waitRequest()?->body);
            $tcp->respond(strtoupper($body));
            $answer = Vectors::frame(0, [5], 'WRITE' . strtoupper($body));
            self::assertSame($answer, self::readExactly($server, \strlen($answer)));
        }
        fclose($server);

        self::assertNull($tcp->waitRequest(), 'the end of the relay ends the loop');
    }

    /**
     * One event per read (light load) is taken by TcpWorker::waitRequest() itself when the read
     * brings a plain event whole whose lead is known, and compared with the context decoded last
     * before the memo is looked up: every request must still be its own, when connections
     * alternate with contexts of the same length, a context changes (CLOSE, TLS facts) or carries
     * a state, an event needs a second read, and control frames come between events.
     */
    public function testOneEventPerReadIsEachItsOwnRequest(): void
    {
        [$tcp, $server] = self::worker();
        $tls = ['version' => 'TLSv1.3', 'cipher' => 'TLS13_AES_128_GCM_SHA256', 'sni' => null, 'client_subject' => null, 'client_sha256' => null];
        $a = '00000000-0000-4000-8000-00000000000a';
        $b = '00000000-0000-4000-8000-00000000000b';
        $large = str_repeat('L', 5000) . "\n"; // more than one read brings (Session::SMALL_READ)
        $events = [
            [$a, "1\n", '', null, 'DATA'],
            [$b, "2\n", '', null, 'DATA'],
            [$a, "3\n", '', null, 'DATA'],
            [$a, "4\n", '', null, 'DATA'],
            'pid',
            [$b, "5\n", '', null, 'DATA'],
            'pid',
            [$a, $large, '', null, 'DATA'],
            [$b, $large, '', null, 'DATA'],
            [$b, "6\n", '', $tls, 'DATA'],
            [$b, "7\n", '', $tls, 'DATA'],
            [$a, "8\n", 's1', null, 'DATA'],
            [$a, "9\n", 's2', null, 'DATA'],
            [$a, '', '', null, 'CLOSE'],
            [$b, "10\n", '', null, 'DATA'],
        ];
        foreach ($events as $n => $event) {
            if ($event === 'pid') {
                fwrite($server, Vectors::bytes('server_pid_request'));
                $pid = Vectors::frame(0x01, [], '{"pid":' . getmypid() . '}');
                // Answered on the way to the next event, which the next round writes.
                $events[$n] = $pid;
                continue;
            }
            [$uuid, $body, $state, $facts, $name] = $event;
            fwrite($server, Vectors::event($name, $body, $state, $uuid, $facts));
            $request = $tcp->waitRequest();
            self::assertNotNull($request, "event {$n}");
            self::assertSame(
                [$uuid, $body, $state, $facts, $name, Vectors::SERVER, Vectors::REMOTE_ADDR],
                [$request->connectionUuid, $request->body, $request->state, $request->getTls(), $request->event->value, $request->server, $request->remoteAddr],
                "event {$n}",
            );
            $answer = Vectors::frame(0, [5], 'WRITE' . strrev($body));
            if (\is_string($events[$n - 1] ?? null)) {
                $answer = $events[$n - 1] . $answer;
            }
            $tcp->respond(strrev($body));
            self::assertSame($answer, self::readExactly($server, \strlen($answer)), "the answer to event {$n}");
        }
        fwrite($server, Vectors::bytes('server_stop'));

        self::assertNull($tcp->waitRequest(), 'the stop request ends the loop');
        fwrite($server, Vectors::event('DATA', "1\n", '', $a)); // a lead known, as event 0's
        self::assertNull($tcp->waitRequest(), 'nothing is read after it');
    }

    /**
     * After an answer written at once (nothing else buffered), waitRequest() reads the relay on
     * one check (Session::$next false): error() and stop() in between, and an event larger than
     * one read or with a state after it, must still reach the server and the loop in order.
     */
    public function testWhatComesBetweenAnAnswerAndTheNextWaitIsKept(): void
    {
        [$tcp, $server] = self::worker();
        $steps = [
            'error' => static fn () => $tcp->getWorker()->error('late'),
            'stop' => static fn () => $tcp->getWorker()->stop(),
            'nothing' => static fn () => null,
        ];
        $sent = [
            'error' => Vectors::frame(0x40, [], 'late'),
            'stop' => Vectors::frame(0, [13], '{"stop":true}'),
            'nothing' => '',
        ];
        $n = 0;
        foreach ($steps as $name => $step) {
            $body = "{$name}\n";
            fwrite($server, Vectors::event('DATA', $body));
            self::assertSame($body, $tcp->waitRequest()?->body, $name);
            $tcp->respond($body);
            $answer = Vectors::frame(0, [5], 'WRITE' . $body);
            self::assertSame($answer, self::readExactly($server, \strlen($answer)), $name);
            $step();
            self::assertSame($sent[$name], self::readExactly($server, \strlen($sent[$name])), "what {$name} sent");
            // The next event larger than one read (Session::SMALL_READ), then one with a state.
            $large = str_repeat('n', 5000) . "{$n}\n";
            fwrite($server, Vectors::event('DATA', $large));
            self::assertSame($large, $tcp->waitRequest()?->body, $name);
            $tcp->read();
            $continue = Vectors::frame(0, [8], 'CONTINUE');
            self::assertSame($continue, self::readExactly($server, \strlen($continue)), $name);
            fwrite($server, Vectors::event('DATA', "stated {$n}\n", 'st'));
            $request = $tcp->waitRequest();
            self::assertSame(["stated {$n}\n", 'st'], [$request?->body, $request?->state], $name);
            $tcp->read();
            self::assertSame($continue, self::readExactly($server, \strlen($continue)), $name);
            $n++;
        }
        fclose($server);

        self::assertNull($tcp->waitRequest(), 'the end of the relay ends the loop');
    }

    public function testThePidHandshakeAndAStateEventPassThrough(): void
    {
        [$tcp, $server] = self::worker();
        fwrite($server, Vectors::bytes('server_pid_request') . Vectors::event('DATA', "x\n", 'st'));

        $request = $tcp->waitRequest();
        self::assertSame("x\n", $request?->body);
        self::assertSame('st', $request?->state);
        $tcp->read();
        $expected = Vectors::frame(0x01, [], '{"pid":' . getmypid() . '}') . Vectors::frame(0, [8], 'CONTINUE');
        self::assertSame($expected, self::readExactly($server, \strlen($expected)));
    }

    public function testEndOfTheRelayInsideAFrameIsARelayError(): void
    {
        [$tcp, $server] = self::worker();
        fwrite($server, substr(Vectors::event('DATA', "x\n"), 0, -1));
        fclose($server);

        $this->expectException(RelayException::class);
        $this->expectExceptionMessage('closed in the middle');

        $tcp->waitRequest();
    }

    public function testAnAnswerToAClosedRelayIsARelayError(): void
    {
        [$tcp, $server] = self::worker();
        fwrite($server, Vectors::event('DATA', "x\n"));
        self::assertNotNull($tcp->waitRequest());
        fclose($server);

        $this->expectException(RelayException::class);
        $this->expectExceptionMessage('could not write to the relay');

        $tcp->respond('x');
    }
}
