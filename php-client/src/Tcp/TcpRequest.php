<?php

declare(strict_types=1);

namespace Pier\Tcp;

/**
 * One event of one client connection, as {@see TcpWorker::waitRequest()} returns it.
 *
 * Exactly one answer is owed for it: {@see TcpWorker::respond()}, {@see TcpWorker::read()},
 * {@see TcpWorker::close()}, {@see \Pier\Worker::error()} or {@see \Pier\Worker::stop()}.
 */
final class TcpRequest
{
    /**
     * What TLS negotiated (Pier extension "tls"), set by TcpWorker for requests of TLS connections;
     * unset for plaintext ones and for requests built by hand.
     *
     * @var array{version: string, cipher: string, sni: ?string, client_subject: ?string, client_sha256: ?string}|null
     */
    private ?array $tls = null;

    /**
     * @param string    $remoteAddr     the client's address, "ip:port" ("[v6]:port")
     * @param TcpEvent  $event          what happened on the connection
     * @param string    $body           the packet with its delimiter for DATA; '' for CONNECTED and CLOSE
     * @param string    $connectionUuid the connection's UUID v4, the same for all its events
     * @param string    $server         the server's name (its key under tcp.servers)
     * @param string    $state          the connection state the last answer set ('' when none; Pier only)
     */
    public function __construct(
        public readonly string $remoteAddr,
        public readonly TcpEvent $event,
        public readonly string $body,
        public readonly string $connectionUuid,
        public readonly string $server,
        public readonly string $state = '',
    ) {
    }

    /** The client's address, "ip:port" ("[v6]:port"). */
    public function getRemoteAddress(): string
    {
        return $this->remoteAddr;
    }

    public function getEvent(): TcpEvent
    {
        return $this->event;
    }

    /** The packet, delimiter included, for DATA; '' for CONNECTED and CLOSE. Binary-safe. */
    public function getBody(): string
    {
        return $this->body;
    }

    /** The connection's UUID v4: the same for every event of one connection. */
    public function getConnectionUuid(): string
    {
        return $this->connectionUuid;
    }

    /** The server's name, its key under tcp.servers in the config. */
    public function getServer(): string
    {
        return $this->server;
    }

    /**
     * The connection state an earlier answer set with {@see TcpWorker::setState()}; '' when none.
     * Binary-safe.
     */
    public function getState(): string
    {
        return $this->state;
    }

    /**
     * What TLS negotiated, when the connection is TLS (implicit, or after {@see TcpWorker::startTls()});
     * null for plaintext. Keys: "version" ("TLSv1.2", "TLSv1.3"), "cipher" (IANA name), "sni" (the name
     * the client asked for, or null), "client_subject" and "client_sha256" (the client certificate's
     * subject and SHA-256 fingerprint in lower-case hex, or null without one). Pier only.
     *
     * @return array{version: string, cipher: string, sni: ?string, client_subject: ?string, client_sha256: ?string}|null
     */
    public function getTls(): ?array
    {
        return $this->tls;
    }
}
