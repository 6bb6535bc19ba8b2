<?php

declare(strict_types=1);

namespace Pier\Tcp;

/**
 * What happened on a connection: the "event" field of an event's context.
 */
enum TcpEvent: string
{
    /** The client connected; the body is empty. Answer it to keep (WRITE/CONTINUE) or drop the connection. */
    case Connected = 'CONNECTED';
    /** One packet arrived; the body is the packet, its delimiter included. */
    case Data = 'DATA';
    /** The connection is gone; the body is empty. Answer it anyway: the answer is ignored. */
    case Close = 'CLOSE';
    /** An event name this worker does not know (a newer server); answer it like any other. */
    case Unknown = 'UNKNOWN';
}
