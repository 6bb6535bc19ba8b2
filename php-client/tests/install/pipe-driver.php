<?php

declare(strict_types=1);

// Drives a worker command through real pipes as the server would: handshake, CONNECTED, two DATA
// events, CLOSE, stop; checks every reply byte for byte and that the worker exits 0.
// Usage: php pipe-driver.php EXPECTED_CLASS_DIR -- COMMAND...

use Pier\Tests\Vectors;

require __DIR__ . '/../bootstrap.php';

$classDir = $argv[1] ?? '';
$command = \array_slice($argv, 3);
$fail = static function (string $why, string $stderr = ''): never {
    fwrite(STDERR, "pipe driver: {$why}\n" . ($stderr === '' ? '' : "worker stderr:\n{$stderr}\n"));
    exit(1);
};
if ($classDir === '' || ($argv[2] ?? '') !== '--' || $command === []) {
    $fail('usage: pipe-driver.php EXPECTED_CLASS_DIR -- COMMAND...');
}

$env = array_merge(getenv(), ['RR_RELAY' => 'pipes', 'RR_MODE' => 'tcp']);
$process = proc_open($command, [['pipe', 'rb'], ['pipe', 'wb'], ['pipe', 'wb']], $pipes, null, $env);
if ($process === false) {
    $fail('could not start ' . implode(' ', $command));
}
$pid = proc_get_status($process)['pid'];
$uuid = '0f6c4e1a-9b1d-4c7e-8f00-5a3b2c1d0e9f';
$input = Vectors::bytes('server_pid_request') . Vectors::event('CONNECTED', '', '', $uuid)
    . Vectors::event('DATA', "ping\r\n", '', $uuid) . Vectors::event('DATA', "\x00\xff binary\r\n", '', $uuid)
    . Vectors::event('CLOSE', '', '', $uuid) . Vectors::bytes('server_stop');
fwrite($pipes[0], $input);
fclose($pipes[0]);
$stdout = (string) stream_get_contents($pipes[1]);
$stderr = (string) stream_get_contents($pipes[2]);
$status = proc_close($process);

$expected = Vectors::frame(0x01, [], '{"pid":' . $pid . '}') . Vectors::bytes('worker_read_continue')
    . Vectors::frame(0, [5], "WRITEping\r\n") . Vectors::frame(0, [5], "WRITE\x00\xff binary\r\n") . Vectors::bytes('worker_close');
if ($stdout !== $expected) {
    $fail('the worker wrote ' . bin2hex($stdout) . ', expected ' . bin2hex($expected), $stderr);
}
if ($status !== 0) {
    $fail("the worker exited with {$status}", $stderr);
}
if (preg_match('/^pier-worker-class: (.*)$/m', $stderr, $m) !== 1 || !str_starts_with($m[1], $classDir)) {
    $fail("Pier\\Worker was not loaded from {$classDir}", $stderr);
}
echo "pipe driver: handshake, 4 events and stop answered byte for byte by {$m[1]}\n";
