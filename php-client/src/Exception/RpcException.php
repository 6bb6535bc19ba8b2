<?php

declare(strict_types=1);

namespace Pier\Exception;

/**
 * An RPC call of {@see \Pier\Tcp\Connections} failed: the address is not usable, the server cannot be
 * reached or answered something unreadable, or it answered with an error (the message is its text).
 */
final class RpcException extends PierException
{
}
