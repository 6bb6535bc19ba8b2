<?php

declare(strict_types=1);

// End to end: `pier serve` with the Composer-installed echo worker (2 workers, each replaced after 3
// events). Checks echo (single, pipelined, binary lines), connection state counted across many worker
// processes on two interleaved connections,
// that the workers ran the installed package, and a clean shutdown on SIGTERM.
// Usage: php serve-driver.php PIER_BINARY APP_DIR EXPECTED_CLASS_DIR

$fail = static function (string $why, string $log = ''): never {
    fwrite(STDERR, "serve driver: {$why}\n" . ($log === '' ? '' : "pier output:\n{$log}\n"));
    exit(1);
};
[, $pier, $app, $classDir] = $argv + [null, '', '', ''];
if ($pier === '' || $app === '' || $classDir === '') {
    $fail('usage: serve-driver.php PIER_BINARY APP_DIR EXPECTED_CLASS_DIR');
}
// Hang guard only: a broken server fails the run instead of hanging it.
$guard = 60;

$php = PHP_BINARY;
$config = <<<YAML
version: "3"
server:
  command: "{$php} {$app}/worker.php"
  relay: pipes
logs:
  level: info
tcp:
  servers:
    echo:
      addr: 127.0.0.1:0
      delimiter: "\\r\\n"
    counter:
      addr: 127.0.0.1:0
      delimiter: "\\n"
  pool:
    num_workers: 2
    max_jobs: 3
YAML;
file_put_contents("{$app}/.rr.yaml", $config);

$process = proc_open([$pier, 'serve', '-c', "{$app}/.rr.yaml"], [['pipe', 'rb'], ['pipe', 'wb'], ['pipe', 'wb']], $pipes, $app);
if ($process === false) {
    $fail("could not start {$pier}");
}
fclose($pipes[0]);
stream_set_blocking($pipes[1], false);
stream_set_blocking($pipes[2], false);
$log = '';
$drain = static function () use ($pipes, &$log): void {
    foreach ([$pipes[1], $pipes[2]] as $pipe) {
        while (\is_string($chunk = fread($pipe, 65536)) && $chunk !== '') {
            $log .= $chunk;
        }
    }
};

// The bound ports (port 0 in the config) from the "listening" log lines.
$addrs = [];
$deadline = time() + $guard;
while (\count($addrs) < 2) {
    if (time() > $deadline || !proc_get_status($process)['running']) {
        $drain();
        $fail('pier did not report listening on both servers', $log);
    }
    $read = [$pipes[1], $pipes[2]];
    $none = null;
    stream_select($read, $none, $none, 1);
    $drain();
    // Without the colour codes a console log may carry.
    $plain = (string) preg_replace('/\e\[[0-9;]*m/', '', $log);
    preg_match_all('/listening.*?server\W+(echo|counter)\W.*?addr\W+(127\.0\.0\.1:\d+)/', $plain, $m, PREG_SET_ORDER);
    foreach ($m as [, $name, $addr]) {
        $addrs[$name] = $addr;
    }
}

$connect = static function (string $addr) use ($fail, $guard) {
    $socket = stream_socket_client("tcp://{$addr}", $errno, $error, $guard);
    if ($socket === false) {
        $fail("could not connect to {$addr}: {$error}");
    }
    stream_set_timeout($socket, $guard);

    return $socket;
};
$exchange = static function ($socket, string $send, string $expect) use ($fail): void {
    fwrite($socket, $send);
    $got = '';
    while (\strlen($got) < \strlen($expect)) {
        $chunk = fread($socket, \strlen($expect) - \strlen($got));
        if ($chunk === false || $chunk === '') {
            $fail('expected ' . json_encode($expect) . ', got ' . json_encode($got) . (stream_get_meta_data($socket)['timed_out'] ? ' (hang guard)' : ' (connection closed)'));
        }
        $got .= $chunk;
    }
    if ($got !== $expect) {
        $fail('expected ' . bin2hex($expect) . ', got ' . bin2hex($got));
    }
};

$echo = $connect($addrs['echo']);
$exchange($echo, "ping\r\n", "ping\r\n");
$exchange($echo, "a\r\nb\r\nc\r\n", "a\r\nb\r\nc\r\n");
$exchange($echo, "\x00\xff\x80 binary\r\n", "\x00\xff\x80 binary\r\n");
fclose($echo);

$first = $connect($addrs['counter']);
$second = $connect($addrs['counter']);
for ($i = 1; $i <= 20; ++$i) {
    $exchange($first, "x{$i}\n", "{$i} x{$i}\n");
    $exchange($second, "y{$i}\n", "{$i} y{$i}\n");
}
fclose($first);
fclose($second);

proc_terminate($process, 15);
$deadline = time() + $guard;
while (($status = proc_get_status($process))['running']) {
    if (time() > $deadline) {
        proc_terminate($process, 9);
        $fail('pier did not exit after SIGTERM', $log);
    }
    $read = [$pipes[1], $pipes[2]];
    $none = null;
    stream_select($read, $none, $none, 1);
    $drain();
}
$drain();
if ($status['exitcode'] !== 0) {
    $fail("pier exited with {$status['exitcode']} after SIGTERM", $log);
}
if (substr_count($log, "pier-worker-class: {$classDir}") < 2) {
    $fail("the workers did not load Pier\\Worker from {$classDir}", $log);
}
preg_match_all('/counter-event.*?pid\W+(\d+)/', (string) preg_replace('/\e\[[0-9;]*m/', '', $log), $m);
$pids = \count(array_unique($m[1]));
if (\count($m[1]) !== 40 || $pids < 14) {
    $fail(\count($m[1]) . " counter events logged by {$pids} workers, expected 40 by at least 14 (max_jobs: 3 allows a worker 3 events)", $log);
}
echo "serve driver: echo (single, pipelined, binary), and state over 2 connections x 20 lines on {$pids} worker processes, through pier serve; clean SIGTERM\n";
