<?php

declare(strict_types=1);

// An echo worker that knows nothing of this repository: only the Composer-installed pier/worker.

require __DIR__ . '/vendor/autoload.php';

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpWorker;

// Which file Pier\Worker came from, so the driver can check it is the installed package.
fwrite(STDERR, 'pier-worker-class: ' . (new ReflectionClass(Pier\Worker::class))->getFileName() . "\n");

$tcp = TcpWorker::create();
while (($request = $tcp->waitRequest()) !== null) {
    match ($request->getEvent()) {
        TcpEvent::Data => $tcp->respond($request->getBody()),
        TcpEvent::Connected => $tcp->read(),
        default => $tcp->close(),
    };
}
