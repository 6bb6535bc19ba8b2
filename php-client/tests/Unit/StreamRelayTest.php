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
