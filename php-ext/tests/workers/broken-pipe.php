<?php

// Reads one event and answers it, while the test has already closed the reading end of the relay: the
// write must fail with a RelayException (PHP ignores SIGPIPE), not kill the process.

declare(strict_types=1);

use Pier\Exception\PierException;
use Pier\Tcp\TcpWorker;

$report = (string) getenv('PIER_TEST_REPORT');
$tcp = TcpWorker::create();
$tcp->waitRequest();
try {
    $tcp->respond('too late');
    $said = ['no exception'];
} catch (PierException $e) {
    $said = ['exception' => $e::class, 'message' => $e->getMessage()];
}
file_put_contents($report, json_encode($said));
