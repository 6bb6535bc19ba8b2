<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\Assert;

/**
 * fixtures/scripted-worker.php as a child process on real pipes, the way the server runs a worker: it
 * reads frames on its stdin and writes frames to its stdout. The child inherits this process's
 * environment (PHP_INI_SCAN_DIR included, so it loads the extension exactly when this process does).
 */
final class WorkerProcess
{
    /** Hang guard only (never an assertion on speed): a broken worker fails the test instead of hanging it. */
    private const GUARD_SECONDS = 60;

    /** @var resource */
    private $process;

    /** @var array{0: resource, 1: resource, 2: resource} */
    private array $pipes;

    /** Stdout bytes already read by {@see receive()}. */
    private string $stdout = '';

    private string $stderr = '';

    private readonly string $report;

    /** The child's pid: the php process itself (no shell in between). */
    public readonly int $pid;

    /**
     * @param list<list<string>>    $steps what the worker does, in order (see the fixture)
     * @param array<string, string> $env   variables added to (or, with '', removed from) the inherited ones
     */
    public function __construct(array $steps, array $env = [])
    {
        $this->report = (string) tempnam(sys_get_temp_dir(), 'pier-report-');
        $environment = array_merge(getenv(), ['RR_RELAY' => 'pipes', 'RR_MODE' => 'tcp'], $env, [
            'PIER_TEST_STEPS' => json_encode($steps, JSON_THROW_ON_ERROR),
            'PIER_TEST_REPORT' => $this->report,
        ]);
        $environment = array_filter($environment, static fn (string $v): bool => $v !== '');
        unset($environment['PIER_FEATURES']);
        if (($env['PIER_FEATURES'] ?? '') !== '') {
            $environment['PIER_FEATURES'] = $env['PIER_FEATURES'];
        }
        $process = proc_open(
            [PHP_BINARY, \dirname(__DIR__) . '/fixtures/scripted-worker.php'],
            [0 => ['pipe', 'rb'], 1 => ['pipe', 'wb'], 2 => ['pipe', 'wb']],
            $pipes,
            null,
            $environment,
        );
        Assert::assertIsResource($process, 'could not start the worker process');
        $this->process = $process;
        /** @var array{0: resource, 1: resource, 2: resource} $pipes */
        $this->pipes = $pipes;
        $this->pid = (int) proc_get_status($process)['pid'];
    }

    /**
     * Runs a worker to its end: sends $input, closes its stdin, returns what it wrote.
     *
     * @param list<list<string>>    $steps
     * @param array<string, string> $env
     */
    public static function run(array $steps, string $input, array $env = []): WorkerRun
    {
        $worker = new self($steps, $env);
        $worker->send($input);

        return $worker->finish();
    }

    /** Writes bytes to the worker's stdin. */
    public function send(string $bytes): void
    {
        while ($bytes !== '') {
            $written = fwrite($this->pipes[0], $bytes);
            Assert::assertNotFalse($written, 'could not write to the worker');
            Assert::assertGreaterThan(0, $written, 'could not write to the worker');
            $bytes = substr($bytes, $written);
        }
    }

    /**
     * Reads exactly $length bytes of the worker's stdout, while the worker keeps running.
     *
     * @param positive-int $length
     */
    public function receive(int $length): string
    {
        $this->pump(fn (): bool => \strlen($this->stdout) >= $length);
        Assert::assertGreaterThanOrEqual($length, \strlen($this->stdout), "the worker wrote {$this->describe()}, expected {$length} bytes on stdout");
        $bytes = substr($this->stdout, 0, $length);
        $this->stdout = substr($this->stdout, $length);

        return $bytes;
    }

    /** Closes the worker's stdin, reads everything it still writes, waits for it to exit. */
    public function finish(): WorkerRun
    {
        if (\is_resource($this->pipes[0])) {
            fclose($this->pipes[0]);
        }
        $this->pump(fn (): bool => false);
        fclose($this->pipes[1]);
        fclose($this->pipes[2]);
        $status = proc_close($this->process);
        $report = array_map(
            static fn (string $line): array => (array) json_decode($line, true, 16, JSON_THROW_ON_ERROR),
            array_values(array_filter(explode("\n", (string) file_get_contents($this->report)))),
        );
        unlink($this->report);

        return new WorkerRun($this->stdout, $this->stderr, $report, $status, $this->pid);
    }

    /**
     * Reads stdout and stderr until $enough says so or both end.
     *
     * @param \Closure(): bool $enough
     */
    private function pump(\Closure $enough): void
    {
        $deadline = microtime(true) + self::GUARD_SECONDS;
        $open = [1 => $this->pipes[1], 2 => $this->pipes[2]];
        while (!$enough() && $open !== []) {
            $ready = array_filter($open, 'is_resource');
            $none = null;
            $left = $deadline - microtime(true);
            Assert::assertGreaterThan(0, $left, "the worker hung: it wrote {$this->describe()}");
            if (stream_select($ready, $none, $none, (int) ceil($left)) === 0) {
                continue;
            }
            foreach ($ready as $stream) {
                $fd = array_search($stream, $open, true);
                $chunk = fread($stream, 65536);
                if ($chunk === '' || $chunk === false) {
                    if (feof($stream)) {
                        unset($open[$fd]);
                    }
                    continue;
                }
                if ($fd === 1) {
                    $this->stdout .= $chunk;
                } else {
                    $this->stderr .= $chunk;
                }
            }
        }
    }

    private function describe(): string
    {
        return sprintf('%d bytes on stdout (%s), stderr: %s', \strlen($this->stdout), bin2hex(substr($this->stdout, 0, 64)), $this->stderr);
    }
}
