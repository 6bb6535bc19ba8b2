<?php

declare(strict_types=1);

// The bench handler shared by both worker implementations: echo every packet, optionally after
// blocking the process for a while (argv[1], µs) like a slow synchronous handler would.

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpWorker;

function pier_bench_serve(int $blockUs): void
{
    $worker = TcpWorker::create();
    while (($request = $worker->waitRequest()) !== null) {
        switch ($request->event) {
            case TcpEvent::Data:
                if ($blockUs > 0) {
                    usleep($blockUs);
                }
                $worker->respond($request->body);
                break;
            case TcpEvent::Close:
                // The server ignores the answer to CLOSE, but one is required.
                $worker->close();
                break;
            default:
                $worker->read();
        }
    }
}

function pier_bench_block_us(array $argv): int
{
    $us = (int) ($argv[1] ?? '0');
    if ($us < 0) {
        fwrite(STDERR, "pier-bench worker: the blocking time must be >= 0 µs\n");
        exit(2);
    }
    return $us;
}
