<?php

declare(strict_types=1);

namespace Pier\Exception;

/**
 * The relay conversation went wrong: the script answered twice or before any request, the server sent a
 * corrupt frame, or the script used a Pier extension (connection state) its server does not support.
 */
final class ProtocolException extends PierException
{
}
