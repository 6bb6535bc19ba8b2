<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\TestCase;
use Pier\Tests\Vectors;

/**
 * RR_RELAY=tcp://… and unix://…: the worker connects to the server and speaks the same frames over the
 * socket; stdout is then not the relay.
 */
final class SocketRelayTest extends TestCase
{
    /**
     * @return iterable<string, array{string}>
     */
    public static function listeners(): iterable
    {
        yield 'tcp' => ['tcp://127.0.0.1:0'];
        yield 'unix' => ['unix://' . sys_get_temp_dir() . '/pier-conformance-' . getmypid() . '.sock'];
    }

    /**
     * @dataProvider listeners
     */
    public function testTheWorkerConnectsToTheRelayAndAnswersOverIt(string $listen): void
    {
        $errno = 0;
        $error = '';
        $server = stream_socket_server($listen, $errno, $error);
        self::assertNotFalse($server, "could not listen on {$listen}: {$error}");
        $address = str_starts_with($listen, 'tcp://') ? 'tcp://' . stream_socket_get_name($server, false) : $listen;
        try {
            $worker = new WorkerProcess([['wait'], ['respond', bin2hex("hello\r\n")], ['wait']], ['RR_RELAY' => $address]);
            $connection = stream_socket_accept($server, 60);
            self::assertNotFalse($connection, 'the worker did not connect to ' . $address);

            fwrite($connection, Vectors::bytes('server_pid_request') . Vectors::bytes('server_event_data'));
            stream_socket_shutdown($connection, STREAM_SHUT_WR);
            $received = stream_get_contents($connection);
            fclose($connection);
            $run = $worker->finish();
        } finally {
            fclose($server);
            if (str_starts_with($listen, 'unix://')) {
                @unlink(substr($listen, 7));
            }
        }

        self::assertSame(0, $run->exitCode, $run->stderr);
        self::assertSame(Implementation::expected(), $run->implementation());
        self::assertSame(Vectors::frame(0x01, [], '{"pid":' . $run->pid . '}') . Vectors::bytes('worker_respond_write_hello'), $received);
        self::assertSame('', $run->stdout, 'nothing on stdout with a socket relay');
        self::assertSame([['request' => null]], \array_slice($run->steps(), 2), 'the server closing the socket ends the loop');
    }

    public function testAnUnknownRelayIsARelayException(): void
    {
        $run = WorkerProcess::run([['wait']], '', ['RR_RELAY' => 'carrier-pigeon://loft']);

        self::assertNotSame(0, $run->exitCode);
        self::assertStringContainsString('Pier\Exception\RelayException', $run->stderr);
        self::assertStringContainsString('carrier-pigeon://loft', $run->stderr);
    }

    public function testARelayNobodyListensOnIsARelayException(): void
    {
        $path = sys_get_temp_dir() . '/pier-conformance-nobody-' . getmypid() . '.sock';
        $run = WorkerProcess::run([['wait']], '', ['RR_RELAY' => 'unix://' . $path]);

        self::assertNotSame(0, $run->exitCode);
        self::assertStringContainsString('Pier\Exception\RelayException', $run->stderr);
        self::assertStringContainsString($path, $run->stderr);
    }
}
