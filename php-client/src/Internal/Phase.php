<?php

declare(strict_types=1);

namespace Pier\Internal;

/**
 * Where a worker is in the request/answer cycle.
 *
 * @internal not part of Pier's API
 */
enum Phase: string
{
    /** No request received yet. */
    case Idle = 'idle';
    /** A request was received and has no answer yet. */
    case Pending = 'pending';
    /** The last request was answered. */
    case Answered = 'answered';
}
