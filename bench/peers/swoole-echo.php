<?php

// The "\n"-framed echo on Swoole 6, for side-by-side runs with pier (bench/ab.sh PEERS=...).
// Swoole is not a dependency of Pier: install it yourself (PECL or a source build) and pass its
// module, e.g. `php -d extension=/path/to/swoole.so bench/peers/swoole-echo.php process {port}`.
// argv[1]: `process` (SWOOLE_PROCESS: a reactor thread in the master, PHP in a worker process — Pier's
// architecture) or `base` (SWOOLE_BASE: PHP in the process that owns the sockets). One PHP worker
// process and one reactor thread, as the pier rows run with one PHP worker.

declare(strict_types=1);

[$mode, $port] = [$argv[1] ?? '', (int) ($argv[2] ?? 0)];
if (!in_array($mode, ['process', 'base'], true) || $port <= 0) {
    fwrite(STDERR, "usage: php -d extension=swoole.so swoole-echo.php process|base PORT\n");
    exit(2);
}
$server = new Swoole\Server('127.0.0.1', $port, $mode === 'base' ? SWOOLE_BASE : SWOOLE_PROCESS, SWOOLE_SOCK_TCP);
$server->set([
    'worker_num' => 1,
    'reactor_num' => 1,
    'open_eof_split' => true, // one onReceive per "\n"-terminated line, the line included
    'package_eof' => "\n",
    'log_level' => SWOOLE_LOG_WARNING,
]);
$server->on('receive', static function (Swoole\Server $server, int $fd, int $reactorId, string $line): void {
    $server->send($fd, $line);
});
$server->start();
