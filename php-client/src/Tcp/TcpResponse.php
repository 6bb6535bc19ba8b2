<?php

declare(strict_types=1);

namespace Pier\Tcp;

/**
 * How the server handles an answer: the reply context sent on the wire.
 */
enum TcpResponse: string
{
    /** Write the body to the client and keep reading. */
    case Respond = 'WRITE';
    /** Write the body, then close the connection. */
    case RespondClose = 'WRITECLOSE';
    /** Write nothing and keep reading. */
    case Read = 'CONTINUE';
    /** Close the connection without writing. */
    case Close = 'CLOSE';
}
