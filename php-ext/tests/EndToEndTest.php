<?php

declare(strict_types=1);

namespace Pier\Ext\Tests;

use PHPUnit\Framework\TestCase;

/**
 * The real `pier serve` (target/release/pier) with workers using the extension: echo round trips and
 * connection state kept by the server across worker processes (max_jobs forces replacements).
 */
final class EndToEndTest extends TestCase
{
    /** @var resource|null */
    private $pier = null;
    /** @var array<int, resource> */
    private array $pipes = [];
    private string $dir = '';
    private int $port = 0;

    protected function setUp(): void
    {
        $root = \dirname(__DIR__, 2);
        $binary = $root . '/target/release/pier';
        self::assertFileExists($binary, 'build first: ./dev.sh build');

        $probe = stream_socket_server('tcp://127.0.0.1:0');
        self::assertIsResource($probe);
        $this->port = (int) substr((string) strrchr((string) stream_socket_get_name($probe, false), ':'), 1);
        fclose($probe);

        $this->dir = sys_get_temp_dir() . '/pier-ext-e2e-' . getmypid() . '-' . bin2hex(random_bytes(4));
        mkdir($this->dir);
        $command = json_encode([PHP_BINARY, '-n', '-d', 'extension=' . $root . '/target/release/libpier.so', __DIR__ . '/workers/state-echo.php']);
        file_put_contents($this->dir . '/.rr.yaml', <<<YAML
            version: "3"
            server:
              command: {$command}
              env:
                PIER_TEST_REPORT: "{$this->dir}/closed.txt"
            tcp:
              servers:
                echo:
                  addr: tcp://127.0.0.1:{$this->port}
                  delimiter: "\\n"
                  max_state_size: 64
              pool:
                num_workers: 2
                max_jobs: 3
            YAML);

        $this->pier = proc_open(
            [$binary, 'serve', '-c', $this->dir . '/.rr.yaml'],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', $this->dir . '/pier.log', 'w'], 2 => ['file', $this->dir . '/pier.log', 'a']],
            $this->pipes,
        );
        self::assertIsResource($this->pier);
        for ($i = 0; $i < 300; ++$i) {
            $client = @stream_socket_client("tcp://127.0.0.1:{$this->port}", $errno, $errstr, 1);
            if ($client !== false) {
                fclose($client);

                return;
            }
            if (!proc_get_status($this->pier)['running']) {
                break;
            }
            usleep(100_000);
        }
        self::fail('pier serve did not start listening; log: ' . $this->log());
    }

    protected function tearDown(): void
    {
        if ($this->pier !== null) {
            proc_terminate($this->pier, 15);
            for ($i = 0; $i < 200 && proc_get_status($this->pier)['running']; ++$i) {
                usleep(50_000);
            }
            if (proc_get_status($this->pier)['running']) {
                proc_terminate($this->pier, 9);
            }
            proc_close($this->pier);
        }
        foreach (glob($this->dir . '/{,.}*', GLOB_BRACE) ?: [] as $file) {
            if (is_file($file)) {
                unlink($file);
            }
        }
        @rmdir($this->dir);
    }

    private function log(): string
    {
        return (string) @file_get_contents($this->dir . '/pier.log');
    }

    /** @return resource */
    private function connect()
    {
        $client = stream_socket_client("tcp://127.0.0.1:{$this->port}", $errno, $errstr, 5);
        self::assertIsResource($client, $errstr);
        stream_set_timeout($client, 20);

        return $client;
    }

    /** The lines the server sent until it closed the connection (bounded by the read timeout). */
    private static function readToClose($client): string
    {
        $all = '';
        while (!feof($client)) {
            $chunk = fread($client, 65536);
            if ($chunk === false || ($chunk === '' && stream_get_meta_data($client)['timed_out'])) {
                self::fail('the server neither answered nor closed');
            }
            $all .= $chunk;
        }

        return $all;
    }

    /** Waits (bounded) until $n CLOSE states were reported; returns them sorted (connections close concurrently). */
    private function closedStates(int $n): array
    {
        for ($i = 0; $i < 200; ++$i) {
            // The file appears with the first CLOSE a worker handles: until then, nothing yet.
            $path = $this->dir . '/closed.txt';
            $lines = is_file($path) ? (file($path, FILE_IGNORE_NEW_LINES) ?: []) : [];
            if (\count($lines) >= $n) {
                sort($lines);

                return $lines;
            }
            usleep(50_000);
        }
        self::fail('no CLOSE event reached a worker; log: ' . $this->log());
    }

    public function testEchoAndStateAcrossWorkerProcesses(): void
    {
        $client = $this->connect();
        $pids = [];
        for ($n = 1; $n <= 10; ++$n) {
            $line = "line {$n} \x00\xff\n";
            fwrite($client, $line);
            $reply = (string) fgets($client);
            self::assertMatchesRegularExpression('/^pid=(\d+) n=' . $n . ' /', $reply, $this->log());
            self::assertSame($line, substr($reply, strpos($reply, ' ', strpos($reply, 'n=')) + 1), 'the body came back byte for byte');
            $pids[explode(' ', $reply)[0]] = true;
        }
        self::assertGreaterThanOrEqual(4, \count($pids), 'max_jobs 3 spread 11 events over at least 4 worker processes');
        fclose($client);

        // The first line is setUp's readiness probe: connected (state "\0\xff0"), closed.
        self::assertSame([bin2hex("\x00\xff0"), bin2hex("\x00\xff10")], $this->closedStates(2), 'CLOSE carries the last state');
    }

    public function testAStateOverMaxStateSizeClosesTheConnectionWithoutWritingTheReply(): void
    {
        $client = $this->connect();
        fwrite($client, "one\n");
        self::assertStringEndsWith("n=1 one\n", (string) fgets($client));
        fwrite($client, "BIG\n");

        self::assertSame('', self::readToClose($client), 'nothing of that reply was written');
        fclose($client);
        self::assertSame([bin2hex("\x00\xff0"), bin2hex("\x00\xff1")], $this->closedStates(2), 'the oversized state was not stored');
    }
}
