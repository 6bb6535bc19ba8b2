<?php

declare(strict_types=1);

namespace Pier\Tcp;

use Pier\Exception\ProtocolException;
use Pier\Exception\RelayException;
use Pier\Internal\Access;
use Pier\Internal\Frame;
use Pier\Internal\Session;
use Pier\Worker;

/**
 * The TCP worker loop: wait for an event of some connection, answer it, repeat.
 *
 * ```php
 * $tcp = TcpWorker::create();
 * while ($request = $tcp->waitRequest()) {
 *     $tcp->respond($request->getBody());
 * }
 * ```
 */
final class TcpWorker
{
    /** The conversation shared with $worker, so Worker::error()/stop() answer the same request. */
    private readonly Session $session;

    public function __construct(
        private readonly Worker $worker,
    ) {
        $this->session = Access::session($worker);
    }

    /**
     * A TcpWorker over {@see Worker::create()}.
     *
     * @throws RelayException
     */
    public static function create(): TcpWorker
    {
        return new self(Worker::create());
    }

    public function getWorker(): Worker
    {
        return $this->worker;
    }

    /**
     * Blocks until the server sends an event and returns it; answers pid handshakes on the way. Null when
     * the server asks the worker to stop or closes the relay: leave the loop and let the script end.
     *
     * @throws ProtocolException when the previous request has no answer yet, or the server's frame is corrupt
     * @throws RelayException    when the relay fails or ends in the middle of a frame
     */
    public function waitRequest(): ?TcpRequest
    {
        $frame = $this->session->nextRequest();

        return $frame === null ? null : self::request($frame);
    }

    /**
     * Answers the pending request: write $body to the client and keep reading ({@see TcpResponse::Respond}),
     * or as $response says.
     *
     * @throws ProtocolException when there is no pending request (answering twice, or before any request)
     * @throws RelayException
     */
    public function respond(string $body, TcpResponse $response = TcpResponse::Respond): void
    {
        $this->session->answer($response->value, $body);
    }

    /**
     * Answers the pending request: write nothing and keep reading (CONTINUE).
     *
     * @throws ProtocolException when there is no pending request
     * @throws RelayException
     */
    public function read(): void
    {
        $this->session->answer(TcpResponse::Read->value, '');
    }

    /**
     * Answers the pending request: close the connection without writing (CLOSE).
     *
     * @throws ProtocolException when there is no pending request
     * @throws RelayException
     */
    public function close(): void
    {
        $this->session->answer(TcpResponse::Close->value, '');
    }

    /**
     * Attaches a connection state to the next answer (respond/read/close) of the pending request: the
     * server keeps it and delivers it with every later event of the connection
     * ({@see TcpRequest::getState()}). '' clears it. Binary-safe. A Pier extension: the server must
     * list "state" in PIER_FEATURES.
     *
     * @throws ProtocolException when the server does not support connection state, or there is no
     *                           pending request
     */
    public function setState(string $state): void
    {
        $this->session->setState($state);
    }

    /**
     * @throws ProtocolException when the event frame is not a TCP event
     */
    private static function request(Frame $frame): TcpRequest
    {
        $options = $frame->options;
        $contextLength = $options[0] ?? null;
        $stateLength = $options[1] ?? 0;
        if ($contextLength === null || \count($options) > 2 || $contextLength + $stateLength > \strlen($frame->payload)) {
            throw new ProtocolException(sprintf(
                'could not read a TCP event: %d options for a %d-byte payload (expected context length [, state length])',
                \count($options),
                \strlen($frame->payload),
            ));
        }
        try {
            $context = json_decode(substr($frame->payload, 0, $contextLength), true, 4, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new ProtocolException('could not read a TCP event: its context is not JSON: ' . $e->getMessage(), 0, $e);
        }
        if (!\is_array($context)) {
            throw new ProtocolException('could not read a TCP event: its context is not a JSON object');
        }
        foreach (['remote_addr', 'server', 'uuid', 'event'] as $key) {
            if (!isset($context[$key]) || !\is_string($context[$key])) {
                throw new ProtocolException("could not read a TCP event: its context has no string \"{$key}\"");
            }
        }
        /** @var array{remote_addr: string, server: string, uuid: string, event: string} $context */

        return new TcpRequest(
            $context['remote_addr'],
            TcpEvent::tryFrom($context['event']) ?? TcpEvent::Unknown,
            substr($frame->payload, $contextLength + $stateLength),
            $context['uuid'],
            $context['server'],
            substr($frame->payload, $contextLength, $stateLength),
        );
    }
}
