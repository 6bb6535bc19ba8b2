<?php

declare(strict_types=1);

/*
 * The fault suite's worker (tests/tests/faults.rs): a line protocol whose commands make the worker
 * misbehave on purpose. Lines end with "\n"; every answer is one line.
 *   CONNECTED          → "hi <uuid>"
 *   pid                → "<pid>"
 *   sleep <ms> [tag]   → sleeps, then "slept <pid> <tag>"
 *   hang               → never answers (an endless loop)
 *   leak <mb>          → keeps <mb> MB more memory, answers "<pid>"
 *   echo               → `echo`es a stray line during the event, then answers "<pid>"
 *   stdout             → answers "<pid>", then writes a stray line straight to fd 1 while idle
 *   stoponce           → the first time in a test: asks pier to stop this worker (the event and
 *                        those behind it are re-run elsewhere) and exits; after that "resumed <pid>"
 *   anything else      → the line back
 *   CLOSE              → appends "<uuid>" to $FAULTS_DIR/closes.log
 */

require __DIR__ . '/../../examples/bootstrap.php';

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpResponse;
use Pier\Tcp\TcpWorker;

$tcp = TcpWorker::create();
$dir = getenv('FAULTS_DIR') ?: sys_get_temp_dir();
$pid = getmypid();
$leaked = [];

while ($request = $tcp->waitRequest()) {
    $uuid = $request->getConnectionUuid();
    if ($request->getEvent() === TcpEvent::Connected) {
        $tcp->respond("hi {$uuid}\n");
        continue;
    }
    if ($request->getEvent() === TcpEvent::Close) {
        file_put_contents("{$dir}/closes.log", "{$uuid}\n", FILE_APPEND | LOCK_EX);
        $tcp->close();
        continue;
    }
    $line = rtrim($request->getBody(), "\n");
    $words = explode(' ', $line);
    switch ($words[0]) {
        case 'pid':
            $tcp->respond("{$pid}\n");
            break;
        case 'sleep':
            usleep(1000 * (int) ($words[1] ?? 10));
            $tcp->respond('slept ' . $pid . ' ' . ($words[2] ?? '') . "\n");
            break;
        case 'stoponce':
            if (@mkdir("{$dir}/stopped")) {
                $tcp->getWorker()->stop();
                exit(0);
            }
            $tcp->respond("resumed {$pid}\n");
            break;
        case 'hang':
            while (true) {
                usleep(100000);
            }
        case 'leak':
            // Written to, so that the pages are resident.
            $leaked[] = str_repeat('x', ((int) ($words[1] ?? 16)) << 20);
            $tcp->respond("{$pid}\n");
            break;
        case 'echo':
            echo "stray echo from the fault worker\n";
            $tcp->respond("{$pid}\n");
            break;
        case 'stdout':
            $tcp->respond("{$pid}\n");
            $out = fopen('php://fd/1', 'wb');
            fwrite($out, "stray bytes on fd 1 while idle\n");
            fclose($out);
            break;
        default:
            $tcp->respond("{$line}\n");
    }
}
