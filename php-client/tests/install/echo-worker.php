<?php

declare(strict_types=1);

// A worker that knows nothing of this repository: only the Composer-installed pier/worker.
// Server "counter" (Pier only): answers "<n> <line>", n counted per connection in the connection state
// kept by the server. Any other server: echoes each line back.

require __DIR__ . '/vendor/autoload.php';

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpWorker;

// Which file Pier\Worker came from, so the drivers can check it is the installed package.
fwrite(STDERR, 'pier-worker-class: ' . (new ReflectionClass(Pier\Worker::class))->getFileName() . "\n");

$tcp = TcpWorker::create();
while (($request = $tcp->waitRequest()) !== null) {
    if ($request->getEvent() !== TcpEvent::Data) {
        $request->getEvent() === TcpEvent::Connected ? $tcp->read() : $tcp->close();
    } elseif ($request->getServer() === 'counter') {
        // One stderr line per counted event: the server logs it with this worker's pid.
        fwrite(STDERR, "counter-event\n");
        $count = (int) $request->getState() + 1;
        $tcp->setState((string) $count);
        $tcp->respond("{$count} {$request->getBody()}");
    } else {
        $tcp->respond($request->getBody());
    }
}
