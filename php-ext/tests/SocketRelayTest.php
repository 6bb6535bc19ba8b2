<?php

declare(strict_types=1);

namespace Pier\Ext\Tests;

use Pier\Ext\Tests\Support\Frames;
use PHPUnit\Framework\TestCase;

/** RR_RELAY=tcp://… and unix://…: the worker connects to us and speaks the same frames. */
final class SocketRelayTest extends TestCase
{
    /** Runs the echo worker against a listener, sends `$input` on the accepted connection, returns what came back. */
    private static function exchange(string $listen, string $relay, string $input): string
    {
        $server = stream_socket_server($listen, $errno, $errstr);
        self::assertIsResource($server, "{$listen}: {$errstr}");
        if (str_starts_with($relay, 'tcp://')) {
            $relay = 'tcp://' . stream_socket_get_name($server, false);
        }
        $report = (string) tempnam(sys_get_temp_dir(), 'pier-ext-report-');
        $proc = proc_open(
            [PHP_BINARY, __DIR__ . '/workers/scripted.php'],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['pipe', 'w']],
            $pipes,
            null,
            array_merge(getenv(), ['RR_RELAY' => $relay, 'PIER_TEST_STEPS' => '[["echo"]]', 'PIER_TEST_REPORT' => $report]),
        );
        self::assertIsResource($proc);
        $conn = stream_socket_accept($server, 20);
        self::assertIsResource($conn, 'the worker connected');
        fwrite($conn, $input);
        // End of input: the echo worker's waitRequest() returns null and it exits, closing its side.
        stream_socket_shutdown($conn, STREAM_SHUT_WR);
        $got = (string) stream_get_contents($conn);
        fclose($conn);
        $stderr = stream_get_contents($pipes[2]);
        self::assertSame(0, proc_close($proc), (string) $stderr);
        unlink($report);

        return $got;
    }

    public function testTcpRelay(): void
    {
        $want = Frames::reply('WRITE', "EHLO example.org\r\n");
        $got = self::exchange('tcp://127.0.0.1:0', 'tcp://', Frames::vector('server_pid_request') . Frames::vector('server_event_data'));
        $frames = Frames::split($got);
        self::assertSame(0x01, $frames[0]['flags'], 'pid reply first');
        self::assertSame($want, $frames[1]['bytes']);
    }

    public function testUnixRelay(): void
    {
        $path = sys_get_temp_dir() . '/pier-ext-' . getmypid() . '.sock';
        @unlink($path);
        try {
            $got = self::exchange('unix://' . $path, 'unix://' . $path, Frames::vector('server_event_data'));
        } finally {
            @unlink($path);
        }
        self::assertSame(Frames::reply('WRITE', "EHLO example.org\r\n"), $got);
    }

    public function testAnUnknownRelayIsARelayException(): void
    {
        $out = shell_exec('RR_RELAY=smoke-signals ' . escapeshellarg(PHP_BINARY)
            . ' -r ' . escapeshellarg('try { Pier\Worker::create(); } catch (Pier\Exception\RelayException $e) { echo $e->getMessage(); }'));
        self::assertStringContainsString('could not use relay "smoke-signals"', (string) $out);
    }
}
