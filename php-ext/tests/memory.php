<?php

// Memory check for issue 4 (not a timed test; run by hand, numbers go in the closing note):
//   PHP_INI_SCAN_DIR=:target/php-ini php php-ext/tests/memory.php [cycles]
// Drives one worker (workers/memory-worker.php) through a real pipe relay for N request/response
// cycles (default 1,000,000) and prints the worker's memory_get_usage() and RSS at the start (after
// the first cycle), after 10,000 cycles (warm), and at the end. Bounded by the cycle count and by a
// 15-minute wall-clock limit.

declare(strict_types=1);

require __DIR__ . '/Support/Frames.php';

use Pier\Ext\Tests\Support\Frames;

$cycles = (int) ($argv[1] ?? 1_000_000);
$batch = 100;
$report = (string) tempnam(sys_get_temp_dir(), 'pier-ext-memory-');
$proc = proc_open(
    [PHP_BINARY, __DIR__ . '/workers/memory-worker.php'],
    [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => STDERR],
    $pipes,
    null,
    array_merge(getenv(), ['PIER_TEST_REPORT' => $report]),
);
if (!is_resource($proc)) {
    fwrite(STDERR, "could not start the worker\n");
    exit(1);
}
[$in, $out] = $pipes;

$event = Frames::event('DATA', "PING example payload with some bytes \x00\xff\r\n");
$reply = Frames::reply('WRITE', "PING example payload with some bytes \x00\xff\r\n");
$events = str_repeat($event, $batch);
$replies = str_repeat($reply, $batch);
$started = microtime(true);
$done = 0;
while ($done < $cycles) {
    if (microtime(true) - $started > 900) {
        fwrite(STDERR, "stopped after 15 minutes at {$done} cycles\n");
        break;
    }
    $n = min($batch, $cycles - $done);
    fwrite($in, $n === $batch ? $events : str_repeat($event, $n));
    $want = $n === $batch ? $replies : str_repeat($reply, $n);
    $got = '';
    while (strlen($got) < strlen($want)) {
        $chunk = fread($out, strlen($want) - strlen($got));
        if ($chunk === false || $chunk === '') {
            fwrite(STDERR, "the worker stopped answering at {$done} cycles\n");
            exit(1);
        }
        $got .= $chunk;
    }
    if ($got !== $want) {
        fwrite(STDERR, "wrong reply bytes at cycle {$done}\n");
        exit(1);
    }
    $done += $n;
}
fclose($in);
stream_get_contents($out);
fclose($out);
$exit = proc_close($proc);
$elapsed = microtime(true) - $started;

echo "cycles: {$done} in " . round($elapsed, 1) . ' s (' . round($done / $elapsed) . "/s), worker exit {$exit}\n";
foreach (file($report, FILE_IGNORE_NEW_LINES) ?: [] as $line) {
    echo $line, "\n";
}
unlink($report);
