<?php

// The echo worker measured by tests/memory.php: reports memory_get_usage() and VmRSS after the first
// request, after 10,000, and after the last (relay EOF).

declare(strict_types=1);

use Pier\Tcp\TcpWorker;

$report = (string) getenv('PIER_TEST_REPORT');
$measure = static function (string $when, int $cycles) use ($report): void {
    preg_match('/^VmRSS:\s+(\d+) kB/m', (string) file_get_contents('/proc/self/status'), $m);
    file_put_contents(
        $report,
        sprintf("%-8s after %7d cycles: memory_get_usage() = %d bytes, RSS = %d kB\n", $when, $cycles, memory_get_usage(), (int) ($m[1] ?? -1)),
        FILE_APPEND,
    );
};

$tcp = TcpWorker::create();
$cycles = 0;
while (($request = $tcp->waitRequest()) !== null) {
    $tcp->respond($request->body);
    ++$cycles;
    if ($cycles === 1) {
        $measure('start', $cycles);
    } elseif ($cycles === 10_000) {
        $measure('warm', $cycles);
    }
}
$measure('end', $cycles);
