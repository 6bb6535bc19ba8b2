<?php

declare(strict_types=1);

namespace Pier\Internal;

use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpRequest;
use Pier\Worker;

/**
 * Reaches Worker's private session without widening Worker's public API, which must stay exactly the
 * extension's (the conformance suite compares them by reflection).
 *
 * @internal not part of Pier's API
 */
final class Access
{
    /** A Worker over any relay (tests, the in-memory relay) instead of RR_RELAY. */
    public static function worker(Relay $relay, bool $hasState, bool $hasPush = false, bool $hasIdleTimeout = false): Worker
    {
        /** @var \Closure(Session): Worker $make */
        $make = \Closure::bind(static fn (Session $session): Worker => new Worker($session), null, Worker::class);

        return $make(new Session($relay, $hasState, $hasPush, $hasIdleTimeout));
    }

    /** The conversation a Worker holds. */
    public static function session(Worker $worker): Session
    {
        /** @var \Closure(Worker): Session $get */
        $get = \Closure::bind(static fn (Worker $w): Session => $w->session, null, Worker::class);

        return $get($worker);
    }

    /**
     * A request of one connection without its body: what a DATA event's context says, built once per
     * connection by TcpWorker and completed per event by {@see requestCompleter()} (cloning it costs
     * less than a `new TcpRequest` with six arguments). TcpRequest's constructor stays exactly the
     * extension's, so the template is built around it; an incomplete request never leaves the
     * package.
     *
     * @param array{version: string, cipher: string, sni: ?string, client_subject: ?string, client_sha256: ?string}|null $tls
     * @param string|null $state the state of every request completed from it ('' for events without
     *                           one: a readonly property written once here, not per event), or null
     *                           to leave it to {@see statedRequestCompleter()}
     */
    public static function requestTemplate(string $remoteAddr, TcpEvent $event, string $connectionUuid, string $server, ?array $tls, ?string $state): TcpRequest
    {
        $template = (new \ReflectionClass(TcpRequest::class))->newInstanceWithoutConstructor();
        /** @var \Closure(TcpRequest): void $init */
        $init = \Closure::bind(static function (TcpRequest $r) use ($remoteAddr, $event, $connectionUuid, $server, $tls, $state): void {
            $r->remoteAddr = $remoteAddr;
            $r->event = $event;
            $r->connectionUuid = $connectionUuid;
            $r->server = $server;
            $r->tls = $tls;
            if ($state !== null) {
                $r->state = $state;
            }
        }, null, TcpRequest::class);
        $init($template);

        return $template;
    }

    /**
     * The function that completes a {@see requestTemplate()} that has its state into one event's
     * request: a clone with the event's body (a readonly property left unset by the template, so
     * set once here).
     *
     * Called for every event, so the closure declares no types: PHP 8.2 without opcache checks a
     * class-typed parameter or return value by looking the class up (~60 instructions each), a
     * string parameter for ~20 (measured); waitRequest() passes only a template and a string, and
     * declares what it returns.
     *
     * @return \Closure(TcpRequest, string): TcpRequest
     */
    public static function requestCompleter(): \Closure
    {
        return \Closure::bind(static function ($template, $body) {
            $request = clone $template;
            $request->body = $body;

            return $request;
        }, null, TcpRequest::class);
    }

    /**
     * As {@see requestCompleter()}, for a template without state (an event that carries one): the
     * clone gets the event's body and state. Without types, as {@see requestCompleter()}.
     *
     * @return \Closure(TcpRequest, string, string): TcpRequest
     */
    public static function statedRequestCompleter(): \Closure
    {
        return \Closure::bind(static function ($template, $body, $state) {
            $request = clone $template;
            $request->body = $body;
            $request->state = $state;

            return $request;
        }, null, TcpRequest::class);
    }
}
