<?php

declare(strict_types=1);

namespace Pier\Internal;

use Pier\Exception\RelayException;

/**
 * A byte transport to the server: pipes, a socket, or memory (tests). Framing lives in {@see Session}.
 *
 * @internal not part of Pier's API; the extension has no such class
 */
interface Relay
{
    /**
     * Blocks until bytes arrive and returns some of them (at most $atMost); '' only at end of stream.
     *
     * @param positive-int $atMost
     *
     * @throws RelayException when the transport fails
     */
    public function read(int $atMost): string;

    /**
     * Writes one complete frame, in one write when the transport takes it whole.
     *
     * @param non-empty-string $frame
     *
     * @throws RelayException when the transport fails or is closed
     */
    public function write(string $frame): void;
}
