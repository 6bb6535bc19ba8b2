<?php

// The end-to-end worker (EndToEndTest): echoes each line with its pid and a counter kept in the
// connection state (binary, so it round-trips bytes PHP strings carry: NUL and 0xFF); "BIG" asks for a
// state over the server's max_state_size; on CLOSE it appends the delivered state (hex) to
// PIER_TEST_REPORT.

declare(strict_types=1);

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpWorker;

$tcp = TcpWorker::create();
while (($request = $tcp->waitRequest()) !== null) {
    switch ($request->event) {
        case TcpEvent::Connected:
            $tcp->setState("\x00\xff0");
            $tcp->read();
            break;
        case TcpEvent::Data:
            if ($request->body === "BIG\n") {
                $tcp->setState(str_repeat("\xee", 1000));
                $tcp->respond("must never be written\n");
                break;
            }
            $n = (int) substr($request->state, 2) + 1;
            $tcp->setState("\x00\xff{$n}");
            $tcp->respond(sprintf("pid=%d n=%d %s", getmypid(), $n, $request->body));
            break;
        default:
            file_put_contents((string) getenv('PIER_TEST_REPORT'), bin2hex($request->state) . "\n", FILE_APPEND);
            $tcp->close();
    }
}
