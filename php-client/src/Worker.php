<?php

declare(strict_types=1);

namespace Pier;

use Pier\Exception\ProtocolException;
use Pier\Exception\RelayException;
use Pier\Internal\Session;
use Pier\Internal\StreamRelay;

/**
 * A worker's link to the Pier (or RoadRunner) server. Usually wrapped in {@see Tcp\TcpWorker}.
 *
 * This is the pure-PHP implementation from the pier/worker package; when the pier extension is loaded
 * its own Pier\Worker is used instead, with the same API.
 */
final class Worker
{
    /** Whether create() has already routed PHP's output to stderr (one handler per process is enough). */
    private static bool $outputRouted = false;

    /**
     * Use {@see create()}.
     */
    private function __construct(
        private readonly Session $session,
    ) {
    }

    /**
     * The worker for this process: the relay RR_RELAY names ("pipes", the default; "tcp://host:port";
     * "unix:///path"), with connection state enabled when PIER_FEATURES lists "state" and server push
     * when it lists "push".
     *
     * It also routes PHP's output (echo, print, var_dump, displayed errors) to stderr, so it cannot
     * corrupt the pipe relay on stdout; see php-client/README.md for what this cannot catch.
     *
     * @throws RelayException when the relay cannot be opened
     */
    public static function create(): Worker
    {
        $worker = new self(new Session(
            StreamRelay::fromEnvironment(),
            Session::stateFromEnvironment(),
            Session::pushFromEnvironment(),
            Session::idleTimeoutFromEnvironment(),
        ));
        self::routeOutputToStderr();

        return $worker;
    }

    /**
     * Reports an error to the server instead of an answer: it logs the message and closes the
     * connection without writing. Answers the pending request; always sent.
     *
     * @throws RelayException
     */
    public function error(string $message): void
    {
        $this->session->error($message);
    }

    /**
     * Asks the server to replace this worker: the pending event is run again on another worker, nothing
     * is lost. Answers the pending request; always sent. Exit the script afterwards.
     *
     * @throws RelayException
     */
    public function stop(): void
    {
        $this->session->stop();
    }

    private static function routeOutputToStderr(): void
    {
        if (self::$outputRouted) {
            return;
        }
        self::$outputRouted = true;
        $stderr = \defined('STDERR') ? \STDERR : fopen('php://stderr', 'wb');
        // Chunk size 1: every echo is passed on at once, so nothing waits in the buffer and the order of
        // stderr lines follows the script.
        ob_start(static function (string $chunk) use ($stderr): string {
            if ($chunk !== '' && $stderr !== false) {
                fwrite($stderr, $chunk);
            }

            return '';
        }, 1);
    }
}
