<?php

// Stubs for the `pier` PHP extension (php-ext/), for IDEs and static analysis. They match the
// extension's real signatures (checked by php-ext/tests/StubsTest.php against reflection); they are
// never loaded at runtime.

declare(strict_types=1);

namespace Pier {
    /**
     * A worker's connection to the server (the relay). Only `create()` makes one.
     */
    final class Worker
    {
        private function __construct() {}

        /**
         * The worker for this process, over the relay `RR_RELAY` names: `pipes` (the default),
         * `tcp://host:port` or `unix:///path` (socket relays retry connecting for 5 seconds).
         * With pipes, fd 1 is moved to a private descriptor and stdout is pointed at stderr, so
         * `echo`, `print`, `var_dump`, `fwrite(STDOUT)` and C-level writes cannot corrupt the relay.
         * Every call in one process returns a worker over the same relay.
         *
         * @throws \Pier\Exception\RelayException when the relay cannot be set up or reached
         */
        public static function create(): Worker {}

        /**
         * Sends an error frame: the server logs the message and closes the connection. Answers the
         * pending request; always sent.
         *
         * @throws \Pier\Exception\RelayException when the write fails
         */
        public function error(string $message): void {}

        /**
         * Sends the `{"stop":true}` reply: the server replaces this worker and re-runs the event on
         * another one. Answers the pending request; always sent.
         *
         * @throws \Pier\Exception\RelayException when the write fails
         */
        public function stop(): void {}
    }
}

namespace Pier\Tcp {
    final class TcpWorker
    {
        public function __construct(\Pier\Worker $worker) {}

        /** `new TcpWorker(Worker::create())`. */
        public static function create(): TcpWorker {}

        /** The worker given to the constructor (the same object). */
        public function getWorker(): \Pier\Worker {}

        /**
         * The next event. Answers pid handshakes itself. Returns null when the server sends the stop
         * request or the relay closes cleanly (the script should then exit), and from then on.
         *
         * @throws \Pier\Exception\RelayException when the relay closes inside a frame or a read fails
         * @throws \Pier\Exception\ProtocolException on a corrupt frame, or when the previous request
         *         was not answered
         */
        public function waitRequest(): ?TcpRequest {}

        /**
         * Answers the pending request with `$body` (binary-safe): WRITE by default.
         *
         * @throws \Pier\Exception\ProtocolException when answering twice or before any request
         * @throws \Pier\Exception\RelayException when the write fails
         */
        public function respond(string $body, TcpResponse $response = TcpResponse::Respond): void {}

        /**
         * Answers CONTINUE: write nothing, keep reading.
         *
         * @throws \Pier\Exception\ProtocolException when answering twice or before any request
         * @throws \Pier\Exception\RelayException when the write fails
         */
        public function read(): void {}

        /**
         * Answers CLOSE: close the connection without writing.
         *
         * @throws \Pier\Exception\ProtocolException when answering twice or before any request
         * @throws \Pier\Exception\RelayException when the write fails
         */
        public function close(): void {}

        /**
         * Pier extension (needs `state` in `PIER_FEATURES`): attaches a binary-safe connection
         * state to the next answer (respond/read/close) of the pending request; '' clears it. The
         * server delivers it as `TcpRequest::$state` with every later event of the connection.
         *
         * @throws \Pier\Exception\ProtocolException when the server does not support state, or no
         *         request is pending
         */
        public function setState(string $state): void {}
    }

    final class TcpRequest
    {
        public readonly string $remoteAddr;
        public readonly TcpEvent $event;
        public readonly string $body;
        public readonly string $connectionUuid;
        public readonly string $server;
        /** The connection state (Pier extension); '' when none. */
        public readonly string $state;

        public function __construct(string $remoteAddr, TcpEvent $event, string $body, string $connectionUuid, string $server, string $state = '') {}

        public function getRemoteAddress(): string {}

        public function getEvent(): TcpEvent {}

        /** The packet for DATA (delimiter included); '' otherwise. */
        public function getBody(): string {}

        public function getConnectionUuid(): string {}

        public function getServer(): string {}

        public function getState(): string {}
    }

    enum TcpEvent: string
    {
        case Connected = 'CONNECTED';
        case Data = 'DATA';
        case Close = 'CLOSE';
        case Unknown = 'UNKNOWN';
    }

    enum TcpResponse: string
    {
        case Respond = 'WRITE';
        case RespondClose = 'WRITECLOSE';
        case Read = 'CONTINUE';
        case Close = 'CLOSE';
    }
}

namespace Pier\Exception {
    class PierException extends \RuntimeException {}

    /** The relay failed: cannot connect, closed inside a frame, a read or write failed. */
    final class RelayException extends PierException {}

    /** Misuse or corruption: answering twice or before any request, a corrupt frame, state unsupported. */
    final class ProtocolException extends PierException {}
}
