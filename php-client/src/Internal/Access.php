<?php

declare(strict_types=1);

namespace Pier\Internal;

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
     * Gives a request its TLS facts (TcpRequest's constructor stays exactly the extension's).
     *
     * @param array{version: string, cipher: string, sni: ?string, client_subject: ?string, client_sha256: ?string} $tls
     */
    public static function setTls(TcpRequest $request, array $tls): void
    {
        /** @var \Closure(TcpRequest, array<string, ?string>): void $set */
        $set = \Closure::bind(static function (TcpRequest $r, array $t): void {
            $r->tls = $t;
        }, null, TcpRequest::class);
        $set($request, $tls);
    }
}
