<?php

declare(strict_types=1);

// For tests/tests/rpc_close.rs: a line echo that reports each CLOSE event on stderr (which pier logs),
// so a test sees that the event followed a close it asked for over RPC.

require __DIR__ . '/../../examples/bootstrap.php';

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpWorker;

$tcp = TcpWorker::create();
while ($request = $tcp->waitRequest()) {
    match ($request->event) {
        TcpEvent::Connected => $tcp->read(),
        TcpEvent::Data => $tcp->respond($request->body),
        default => (static function () use ($tcp, $request): void {
            fwrite(STDERR, "close event {$request->connectionUuid} {$request->remoteAddr}\n");
            $tcp->close();
        })(),
    };
}
