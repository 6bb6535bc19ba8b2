<?php

declare(strict_types=1);

/*
 * A telnet chat (examples/chat/README.md): `nc 127.0.0.1 7780`, pick a nickname, talk.
 * Needs a Pier server with server push and connection state (PIER_FEATURES: push, state) and RPC
 * (rpc.listen, given to workers as RR_RPC).
 */

require __DIR__ . '/../bootstrap.php';
require __DIR__ . '/Chat.php';

use Pier\Examples\Chat\Chat;
use Pier\Tcp\Connections;
use Pier\Tcp\TcpWorker;

$tcp = TcpWorker::create();
$chat = new Chat($tcp, Connections::fromEnvironment());

while ($request = $tcp->waitRequest()) {
    try {
        $chat->handle($request);
    } catch (Throwable $e) {
        // One bad event costs only its connection (the server logs the message and closes it).
        $tcp->getWorker()->error('chat: ' . $e::class . ': ' . $e->getMessage());
    }
}
