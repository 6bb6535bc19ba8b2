<?php

declare(strict_types=1);

namespace Pier\Ext\Tests\Support;

/**
 * One worker process driven through real pipes: the test writes frames to its stdin and reads its
 * stdout (the relay) and stderr (where stray output must go) until it exits.
 */
final class Child
{
    public string $stdout = '';
    public string $stderr = '';
    public int $exitCode = -1;
    /** @var list<mixed> what the scripted worker reported, step by step */
    public array $steps = [];

    /**
     * Runs tests/workers/$script with the given steps (see scripted.php), feeds it `$input` and closes
     * its stdin when `$closeInput`; waits (bounded) for it to exit.
     *
     * @param list<list<mixed>> $steps
     * @param array<string, string> $env
     */
    public static function run(string $script, array $steps, string $input, array $env = [], bool $closeInput = true): self
    {
        $report = tempnam(sys_get_temp_dir(), 'pier-ext-report-');
        $env = array_merge(getenv(), ['PIER_TEST_STEPS' => json_encode($steps, JSON_THROW_ON_ERROR), 'PIER_TEST_REPORT' => $report], $env);
        $proc = proc_open(
            [PHP_BINARY, __DIR__ . '/../workers/' . $script],
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']],
            $pipes,
            null,
            $env,
        );
        if (!\is_resource($proc)) {
            throw new \RuntimeException('could not start the worker');
        }
        $child = new self();
        [$in, $out, $err] = $pipes;
        stream_set_blocking($in, false);
        stream_set_blocking($out, false);
        stream_set_blocking($err, false);
        $deadline = microtime(true) + 60;
        $written = 0;
        $inOpen = true;
        while (true) {
            if ($inOpen && $written === \strlen($input) && $closeInput) {
                fclose($in);
                $inOpen = false;
            }
            $read = [];
            foreach ([$out, $err] as $s) {
                if (!feof($s)) {
                    $read[] = $s;
                }
            }
            if ($read === []) {
                break;
            }
            $write = $inOpen && $written < \strlen($input) ? [$in] : [];
            $except = null;
            if (microtime(true) > $deadline) {
                proc_terminate($proc, 9);
                throw new \RuntimeException("worker did not finish in 60 s; stderr: {$child->stderr}");
            }
            if (stream_select($read, $write, $except, 1) === false) {
                break;
            }
            foreach ($write as $w) {
                $n = fwrite($w, substr($input, $written, 1 << 16));
                $written += $n === false ? 0 : $n;
            }
            foreach ($read as $r) {
                $chunk = (string) fread($r, 1 << 16);
                if ($r === $out) {
                    $child->stdout .= $chunk;
                } else {
                    $child->stderr .= $chunk;
                }
            }
        }
        if ($inOpen) {
            fclose($in);
        }
        fclose($out);
        fclose($err);
        $child->exitCode = proc_close($proc);
        foreach (file($report, FILE_IGNORE_NEW_LINES) ?: [] as $line) {
            $child->steps[] = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        }
        unlink($report);

        return $child;
    }

    /** @return list<string> the raw bytes of each frame the worker wrote */
    public function frames(): array
    {
        return array_map(static fn (array $f): string => $f['bytes'], Frames::split($this->stdout));
    }
}
