<?php

declare(strict_types=1);

/*
 * Two servers, one pool of workers: every event says which server it came from.
 *   echo  (tcp://127.0.0.1:7777, lines end with "\n"):   sends each line back; "quit" says bye and closes.
 *   upper (tcp://127.0.0.1:7778, lines end with "\r\n"): sends each line back in upper case.
 */

require __DIR__ . '/../bootstrap.php';

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpResponse;
use Pier\Tcp\TcpWorker;

$tcp = TcpWorker::create();

while ($request = $tcp->waitRequest()) {
    if ($request->getEvent() !== TcpEvent::Data) {
        // CONNECTED: start reading. CLOSE: the answer is ignored, but one is expected.
        $request->getEvent() === TcpEvent::Connected ? $tcp->read() : $tcp->close();
        continue;
    }

    $line = $request->getBody(); // one packet, its delimiter included
    match ($request->getServer()) {
        'echo' => rtrim($line, "\r\n") === 'quit'
            ? $tcp->respond("bye\n", TcpResponse::RespondClose)
            : $tcp->respond($line),
        'upper' => $tcp->respond(strtoupper($line)),
        default => $tcp->getWorker()->error("echo example: no handler for server '{$request->getServer()}'"),
    };
}
