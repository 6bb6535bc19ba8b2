<?php

// Stubs for the `pier` PHP extension (php-ext/), for IDEs and static analysis. They match the
// extension's real signatures (checked by php-ext/tests/StubsTest.php against reflection); they are
// never loaded at runtime.

declare(strict_types=1);

namespace Pier {
    /**
     * The Pier extensions (PROTOCOL.md "Pier extensions") this build of the extension supports, as
     * `PIER_FEATURES` names them; `phpversion('pier')` is its version. `php --ri pier` and
     * `pier --version` show both. The extension's own: the pure-PHP package has no such function.
     *
     * @return list<string>
     */
    function features(): array {}

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

        /**
         * Sets the idle timeout of this request's connection, in milliseconds: once its client sends
         * no byte for that long, the server closes it and sends its CLOSE event. 0 turns it off for
         * this connection; null (the default) goes back to the server's `idle_timeout`. For protocols with their own
         * keep-alive (MQTT). A Pier extension (`idle_timeout` in PIER_FEATURES); sent at once, before
         * this request's answer.
         *
         * @throws \Pier\Exception\ProtocolException without `idle_timeout`, with no pending request, or
         *                                            when `$milliseconds` is negative or over a week
         *                                            (nothing is sent)
         * @throws \Pier\Exception\RelayException   when the write fails
         */
        public function setIdleTimeout(?int $milliseconds = null): void {}

        /**
         * Server push: queues `$data` on connection `$uuid`'s outbound queue (any connection of the
         * server, this one included); it is written in order with that connection's replies, never
         * inside one of them. An unknown or closed uuid is ignored by the server. Binary-safe.
         *
         * The push methods need a Pier server listing `push` in `PIER_FEATURES`, and a request being
         * handled (after `waitRequest()`, before its answer). Each goes out at once as a command frame;
         * the server applies them in the order written, then the answer.
         *
         * @throws \Pier\Exception\ProtocolException without `push`, with no pending request, or when
         *                                            `$uuid` is empty or not UTF-8 (nothing is sent)
         * @throws \Pier\Exception\RelayException   when the write fails
         */
        public function send(string $uuid, string $data): void {}

        /**
         * Server push: queues `$data` on every member of `$group`, or (null) on every connection of
         * this request's server, except the uuids in `$except`.
         *
         * @param list<string> $except
         *
         * @throws \Pier\Exception\ProtocolException as send(); also when `$group` is not 1..128 bytes of
         *                                            UTF-8 or `$except` holds a non-string
         * @throws \Pier\Exception\RelayException
         */
        public function broadcast(string $data, ?string $group = null, array $except = []): void {}

        /**
         * Server push: adds connection `$uuid` (null: this request's) to `$group` (1..128 bytes of
         * UTF-8). Membership dies with the connection; the server refuses a 65th group per connection.
         *
         * @throws \Pier\Exception\ProtocolException as broadcast()
         * @throws \Pier\Exception\RelayException
         */
        public function join(string $group, ?string $uuid = null): void {}

        /**
         * Server push: removes connection `$uuid` (null: this request's) from `$group`.
         *
         * @throws \Pier\Exception\ProtocolException as broadcast()
         * @throws \Pier\Exception\RelayException
         */
        public function leave(string $group, ?string $uuid = null): void {}

        /**
         * Server push: closes connection `$uuid` once what it has queued is written; it gets its CLOSE
         * event. For this request's own connection the close follows this request's answer (whose
         * body is written). Not `close()`, which answers this request with CLOSE.
         *
         * @throws \Pier\Exception\ProtocolException as send()
         * @throws \Pier\Exception\RelayException
         */
        public function disconnect(string $uuid): void {}

        /**
         * Pier extension (needs `starttls` in `PIER_FEATURES`; the server needs `tls`): the next
         * answer (respond/read) of the pending request is written in plaintext, then the server
         * starts TLS on the connection (SMTP/IMAP STARTTLS). Later requests have `getTls()`.
         *
         * @throws \Pier\Exception\ProtocolException when the server does not support STARTTLS
         *         (nothing is sent), or no request is pending
         * @throws \Pier\Exception\RelayException when the write fails
         */
        public function startTls(): void {}
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

        /**
         * What TLS negotiated (Pier extension `tls`); null for plaintext connections.
         *
         * @return array{version: string, cipher: string, sni: ?string, client_subject: ?string, client_sha256: ?string}|null
         */
        public function getTls(): ?array {}
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

    /**
     * Every live connection of a Pier server, from any PHP process, over its RPC listener
     * (`rpc.listen`: goridge RPC, JSON codec, the `pier.*` methods). The socket opens on the first
     * call and is kept; a failed call closes it and the next one reconnects. Calls wait at most 10 s
     * to connect and 30 s for an answer. Sequence numbers, framing and error handling are the stock
     * spiral/goridge client's.
     */
    final class Connections
    {
        /**
         * @param string $address `tcp://host:port` or `unix:///path`, as `rpc.listen` says
         *
         * @throws \Pier\Exception\RpcException when it is neither
         */
        public function __construct(string $address) {}

        /**
         * The server whose address `RR_RPC` holds (set for workers when `rpc.listen` is configured).
         *
         * @throws \Pier\Exception\RpcException when RR_RPC is not set or not an address
         */
        public static function fromEnvironment(): Connections {}

        /**
         * `pier.Send`: queues `$data` on connection `$uuid`; false when no such connection is open.
         * Bytes that are not UTF-8 travel as base64 (`data_b64`).
         *
         * @throws \Pier\Exception\RpcException
         */
        public function send(string $uuid, string $data): bool {}

        /**
         * `pier.Broadcast`: to the members of `$group` (of `$server` only, if given), or with no group
         * to every connection of `$server`, or with neither to every connection; minus `$except`.
         * Returns how many connections it was queued on.
         *
         * @param list<string> $except
         *
         * @throws \Pier\Exception\RpcException
         */
        public function broadcast(string $data, ?string $group = null, ?string $server = null, array $except = []): int {}

        /**
         * `pier.Join`: false when no such connection is open.
         *
         * @throws \Pier\Exception\RpcException
         */
        public function join(string $group, string $uuid): bool {}

        /**
         * `pier.Leave`: false when no such connection is open.
         *
         * @throws \Pier\Exception\RpcException
         */
        public function leave(string $group, string $uuid): bool {}

        /**
         * `pier.Close`: closes connection `$uuid` after what it has queued; it gets its CLOSE event.
         * False when no such connection was open.
         *
         * @throws \Pier\Exception\RpcException
         */
        public function close(string $uuid): bool {}

        /**
         * `pier.List`: one page of the open connections, oldest first (`$limit` at most 1000).
         *
         * @return array{total: int, connections: list<array{uuid: string, server: string, remote_addr: string, connected_at: float, bytes_in: int, bytes_out: int, groups: list<string>}>}
         *
         * @throws \Pier\Exception\RpcException
         */
        public function list(?string $server = null, ?string $group = null, int $offset = 0, int $limit = 100): array {}

        /**
         * `pier.Info`: one connection, or null when it is not open.
         *
         * @return array{uuid: string, server: string, remote_addr: string, connected_at: float, bytes_in: int, bytes_out: int, groups: list<string>}|null
         *
         * @throws \Pier\Exception\RpcException
         */
        public function info(string $uuid): ?array {}

        /**
         * `pier.Count`: how many connections are open (of one server and/or group).
         *
         * @throws \Pier\Exception\RpcException
         */
        public function count(?string $server = null, ?string $group = null): int {}

        /**
         * `pier.Groups`: the groups with members, sorted by name.
         *
         * @return list<array{group: string, members: int}>
         *
         * @throws \Pier\Exception\RpcException
         */
        public function groups(?string $server = null): array {}
    }
}

namespace Pier\Exception {
    class PierException extends \RuntimeException {}

    /** The relay failed: cannot connect, closed inside a frame, a read or write failed. */
    final class RelayException extends PierException {}

    /** Misuse or corruption: answering twice or before any request, a corrupt frame, state unsupported. */
    final class ProtocolException extends PierException {}

    /**
     * A `Pier\Tcp\Connections` call failed: the address is not usable, the server cannot be reached
     * or answered something unreadable, or it answered with an error (the message is its text).
     */
    final class RpcException extends PierException {}
}
