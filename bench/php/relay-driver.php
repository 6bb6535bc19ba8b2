<?php

declare(strict_types=1);

// Plays pier's side of the relay for one bench worker (bench/worker-ir.sh): starts the worker
// command with its stdin/stdout as the pipe relay, writes DATA events of 32-byte lines as pier
// would (EVENTS in all, BATCH events per write, rotating over CONNS connections, each with its
// own context), reads every answer before writing the next batch, then sends the stop request.
// BATCH=1 is the 1 × 1 pattern (one event per read, its answer written at once); a larger BATCH is
// what a worker reads under load. No pier process, so callgrind of the worker alone is cheap.
// SIZES (env, default 1): how many line lengths (32, 33, …) each connection's events cycle
// through, for protocols whose messages are not all of one size.
//
// Usage: [SIZES=n] php relay-driver.php EVENTS BATCH CONNS STDERR_FILE WORKER_COMMAND...
// Prints the number of answers read.

[, $events, $batch, $conns, $stderr] = $argv;
$command = array_slice($argv, 5);
[$events, $batch, $conns] = [(int) $events, max(1, (int) $batch), max(1, (int) $conns)];

/** @param list<int> $options */
function relay_frame(int $flags, array $options, string $payload): string
{
    $head = pack('CCV', 0x10 | (3 + count($options)), $flags, strlen($payload));

    return $head . pack('V', crc32($head)) . "\0\0" . ($options === [] ? '' : pack('V*', ...$options)) . $payload;
}

$sizes = max(1, (int) (getenv('SIZES') ?: 1));
$frames = []; // event n: connection n % CONNS, length (n / CONNS) % SIZES
for ($s = 0; $s < $sizes; $s++) {
    for ($i = 0; $i < $conns; $i++) {
        $context = sprintf('{"remote_addr":"127.0.0.1:%d","server":"bench","uuid":"1c9d8f2a-4b7e-4d2c-9a51-%012x","event":"DATA"}', 40000 + $i, $i);
        $frames[] = relay_frame(0, [strlen($context)], $context . str_pad("line {$i}", 31 + $s, '.') . "\n");
    }
}
$env = getenv();
$env['PIER_FEATURES'] = 'state,push,idle_timeout,starttls,tls';
$worker = proc_open($command, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['file', $stderr, 'w']], $pipes, null, $env);
if ($worker === false) {
    fwrite(STDERR, "relay-driver: could not start the worker\n");
    exit(1);
}
[$in, $out] = [$pipes[0], $pipes[1]];

$exactly = static function (int $n) use ($out): string {
    $bytes = '';
    while (strlen($bytes) < $n) {
        $chunk = fread($out, $n - strlen($bytes));
        if ($chunk === '' || $chunk === false) {
            fwrite(STDERR, "relay-driver: the worker closed its relay (stderr in the file given)\n");
            exit(1);
        }
        $bytes .= $chunk;
    }

    return $bytes;
};
$answers = 0;
for ($sent = 0, $next = 0; $sent < $events; $sent += $n) {
    $n = min($batch, $events - $sent);
    $bytes = '';
    for ($i = 0; $i < $n; $i++) {
        $bytes .= $frames[$next++ % \count($frames)];
    }
    fwrite($in, $bytes);
    for ($i = 0; $i < $n; $i++) {
        $head = $exactly(12);
        $answer = $exactly((ord($head[0]) & 0x0F) * 4 - 12 + unpack('V', $head, 2)[1]);
        if ($i === 0 && !str_contains($answer, 'WRITE')) {
            fwrite(STDERR, "relay-driver: an answer is not a WRITE\n");
            exit(1);
        }
        $answers++;
    }
}
fwrite($in, relay_frame(1, [], '{"stop":true}'));
fclose($in);
while (!feof($out) && fread($out, 65536) !== false) {
}
proc_close($worker);
echo $answers, "\n";
