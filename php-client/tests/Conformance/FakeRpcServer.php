<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\Assert;

/**
 * fixtures/fake-rpc-server.php as a child process: a scripted goridge RPC server that records every
 * request. Its answers echo each request's sequence number and method, so it serves any client.
 */
final class FakeRpcServer
{
    /** @var resource */
    private $process;

    /** @var array{0: resource, 1: resource, 2: resource} */
    private array $pipes;

    /** Where it listens: tcp://127.0.0.1:PORT or the unix:// address given. */
    public readonly string $address;

    /**
     * @param list<list<string>> $answers see the fixture
     */
    public function __construct(array $answers, string $listen = 'tcp://127.0.0.1:0')
    {
        $env = array_merge(getenv(), ['PIER_TEST_ANSWERS' => json_encode($answers, JSON_THROW_ON_ERROR)]);
        $process = proc_open(
            [PHP_BINARY, \dirname(__DIR__) . '/fixtures/fake-rpc-server.php', $listen],
            [0 => ['pipe', 'rb'], 1 => ['pipe', 'wb'], 2 => ['pipe', 'wb']],
            $pipes,
            null,
            $env,
        );
        Assert::assertIsResource($process, 'could not start the fake RPC server');
        $this->process = $process;
        /** @var array{0: resource, 1: resource, 2: resource} $pipes */
        $this->pipes = $pipes;
        $line = (string) fgets($pipes[1]);
        if (!str_starts_with($line, 'listening ')) {
            Assert::fail('the fake RPC server did not start: ' . stream_get_contents($pipes[2]));
        }
        $this->address = trim(substr($line, \strlen('listening ')));
    }

    /**
     * Waits for the server to exit (all answers used, client gone) and returns the requests it saw.
     *
     * @return list<array{seq: int, method: string, argument: string, flags: int, options: list<int>, hex: string}>
     */
    public function requests(): array
    {
        $out = (string) stream_get_contents($this->pipes[1]);
        $err = (string) stream_get_contents($this->pipes[2]);
        fclose($this->pipes[0]);
        fclose($this->pipes[1]);
        fclose($this->pipes[2]);
        $status = proc_close($this->process);
        Assert::assertSame(0, $status, "the fake RPC server failed: {$err}");

        return array_map(
            static fn (string $line): array => json_decode($line, true, 8, JSON_THROW_ON_ERROR),
            array_values(array_filter(explode("\n", $out))),
        );
    }
}
