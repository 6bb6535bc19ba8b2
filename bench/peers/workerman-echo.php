<?php

// The "\n"-framed echo on Workerman 5, for side-by-side runs with pier (bench/ab.sh PEERS=...).
// Workerman is not a dependency of Pier: install it yourself (`composer require workerman/workerman`)
// and name its autoloader, e.g.
// `WORKERMAN_AUTOLOAD=/path/to/vendor/autoload.php php bench/peers/workerman-echo.php {port}`.
// One worker process; Workerman's `text` protocol strips the "\n" and send() puts it back.
// The event loop is Workerman's default for the PHP it runs on (select without ext-event/ev).

declare(strict_types=1);

$port = (int) ($argv[1] ?? 0);
$autoload = getenv('WORKERMAN_AUTOLOAD');
if ($port <= 0 || $autoload === false || !is_file($autoload)) {
    fwrite(STDERR, "usage: WORKERMAN_AUTOLOAD=vendor/autoload.php php workerman-echo.php PORT\n");
    exit(2);
}
require $autoload;

use Workerman\Worker;

// Workerman parses its own command line (start/stop/...): run in the foreground, no daemon.
$argv = [$argv[0], 'start'];
$_SERVER['argv'] = $argv;
Worker::$logFile = sys_get_temp_dir() . "/workerman-echo-$port.log";
Worker::$pidFile = sys_get_temp_dir() . "/workerman-echo-$port.pid";
$worker = new Worker("text://127.0.0.1:$port");
$worker->count = 1;
$worker->onMessage = static function ($connection, string $line): void {
    $connection->send($line);
};
Worker::runAll();
