<?php

declare(strict_types=1);

// For tests/tests/rpc_close.rs: the pure-PHP package's RPC client against the real server. argv[1] is the
// RPC address, argv[2] and argv[3] the local ports of two clients of the server "lines". Finds their
// connections (pier.List, by remote address), closes the first with RoadRunner's tcp.Close — the stock
// client's framing, through the package's goridge client — and the second with pier.Close
// (Connections::close), and prints one JSON object with the uuids and what each call returned.

use Pier\Internal\RpcClient;
use Pier\Tcp\Connections;

require __DIR__ . '/../../php-client/tests/bootstrap.php';

if (extension_loaded('pier')) {
    fwrite(STDERR, "rpc_close.php must run on the pure-PHP package\n");
    exit(1);
}
$connections = new Connections($argv[1]);
$uuids = [];
foreach ($connections->list(server: 'lines')['connections'] as $c) {
    $uuids[$c['remote_addr']] = $c['uuid'];
}
$first = $uuids["127.0.0.1:{$argv[2]}"] ?? null;
$second = $uuids["127.0.0.1:{$argv[3]}"] ?? null;
if ($first === null || $second === null) {
    fwrite(STDERR, 'rpc_close.php: the clients are not listed: ' . json_encode($uuids) . "\n");
    exit(1);
}
$rpc = RpcClient::to($argv[1]);
echo json_encode([
    'first' => $first,
    'second' => $second,
    'info_server' => $connections->info($first)['server'] ?? null,
    'tcp_close' => $rpc->call('tcp.Close', $first),
    'tcp_close_again' => $rpc->call('tcp.Close', ['uuid' => $first]),
    'tcp_close_unknown' => $rpc->call('tcp.Close', '00000000-0000-4000-8000-000000000000'),
    'pier_close' => $connections->close($second),
], JSON_THROW_ON_ERROR), "\n";
