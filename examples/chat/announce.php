<?php

declare(strict_types=1);

/*
 * php examples/chat/announce.php "text": says "text" to everyone connected to the chat, from outside the
 * server, over its RPC listener: RR_RPC if set, else rpc.listen from examples/chat/.rr.yaml.
 */

require __DIR__ . '/../bootstrap.php';

use Pier\Tcp\Connections;

if ($argc !== 2 || $argv[1] === '') {
    fwrite(STDERR, "usage: php examples/chat/announce.php \"text\"\n");
    exit(2);
}

$address = getenv('RR_RPC');
if (!is_string($address) || $address === '') {
    // The example config's rpc.listen (a two-line YAML lookup: no YAML parser needed for this file).
    $config = (string) file_get_contents(__DIR__ . '/.rr.yaml');
    if (preg_match('/^rpc:\s*\n(?:\s*#.*\n)*\s+listen:\s*"?([^"\s]+)"?/m', $config, $m) !== 1) {
        fwrite(STDERR, "announce: no RR_RPC and no rpc.listen in examples/chat/.rr.yaml\n");
        exit(1);
    }
    $address = $m[1];
}

try {
    $reached = (new Connections($address))->broadcast("*** {$argv[1]}\n", server: 'chat');
} catch (Pier\Exception\RpcException $e) {
    fwrite(STDERR, "announce: {$e->getMessage()}\n");
    exit(1);
}
echo "announced to {$reached} connection(s)\n";
