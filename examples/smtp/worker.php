<?php

declare(strict_types=1);

/*
 * The SMTP example's worker: a small but real SMTP receiver (see Smtp.php and README.md).
 *
 *   SMTP_MAILDIR   where accepted messages go, one .eml file each (default: examples/smtp/var/mail)
 *   SMTP_HOSTNAME  the name in the greeting (default: localhost)
 *   SMTP_MAX_SIZE  the largest message accepted, in bytes, advertised as SIZE (default: 33554432)
 *   SMTP_TRACE=1   one stderr line per reply sent (not per message line): which worker answered what
 *   SMTP_USERS     the submission servers' users, name:password_hash() lines (default: examples/smtp/var/users)
 *
 * One worker serves the three servers of .rr.yaml, told apart by $request->getServer(): `smtp` (a
 * receiving MTA: no AUTH, STARTTLS offered), `submission` (STARTTLS, then AUTH required) and
 * `submissions` (implicit TLS, AUTH required). STARTTLS is offered only when the server supports it
 * (PIER_FEATURES lists "starttls"; under RoadRunner the servers stay plaintext).
 */

require __DIR__ . '/../bootstrap.php';
require __DIR__ . '/Smtp.php';

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpResponse;
use Pier\Tcp\TcpWorker;
use PierExample\Smtp\Maildir;
use PierExample\Smtp\Server;
use PierExample\Smtp\Transaction;
use PierExample\Smtp\Users;

$hostname = getenv('SMTP_HOSTNAME') ?: 'localhost';
$maildir = new Maildir(getenv('SMTP_MAILDIR') ?: __DIR__ . '/var/mail');
$maxSize = (int) (getenv('SMTP_MAX_SIZE') ?: 32 * 1024 * 1024);
$starttls = in_array('starttls', array_map('trim', explode(',', (string) getenv('PIER_FEATURES'))), true);
$users = Users::fromFile(getenv('SMTP_USERS') ?: __DIR__ . '/var/users');
$servers = [
    'smtp' => new Server($hostname, $maildir, $maxSize, $starttls),
    'submission' => new Server($hostname, $maildir, $maxSize, $starttls, $users),
    'submissions' => new Server($hostname, $maildir, $maxSize, false, $users),
];
$trace = getenv('SMTP_TRACE') === '1';
$tcp = TcpWorker::create();

while ($request = $tcp->waitRequest()) {
    try {
        $transaction = Transaction::fromState($request->getState());
        $smtp = $servers[$request->getServer()] ?? $servers['smtp'];
        if ($request->getEvent() === TcpEvent::Connected) {
            $reply = $smtp->connected();
        } elseif ($request->getEvent() === TcpEvent::Data) {
            $reply = $smtp->line($request->getBody(), $transaction, $request->getTls() !== null);
        } else {
            // CLOSE (or an event this worker does not know): drop an unfinished message.
            $smtp->closed($transaction);
            $tcp->close();
            continue;
        }
    } catch (\JsonException | \RuntimeException $e) {
        // The maildir failed (disk full, permissions): tell the client and hang up; CLOSE cleans up.
        fwrite(STDERR, sprintf("smtp example: connection %s: %s\n", $request->getConnectionUuid(), $e->getMessage()));
        $tcp->respond("421 4.3.0 local error, closing connection\r\n", TcpResponse::RespondClose);
        continue;
    }

    if ($trace && $reply->response !== TcpResponse::Read) {
        fwrite(STDERR, sprintf("smtp trace: worker %d answered %s on %s\n", getmypid(), substr($reply->text, 0, 3), $request->getConnectionUuid()));
    }
    if ($reply->transaction !== null) {
        $tcp->setState($reply->transaction->toState());
    }
    if ($reply->startTls) {
        // Pier writes the 220 in plaintext, then runs the TLS handshake.
        $tcp->startTls();
    }
    $reply->response === TcpResponse::Read ? $tcp->read() : $tcp->respond($reply->text, $reply->response);
}
