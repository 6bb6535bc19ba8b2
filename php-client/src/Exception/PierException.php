<?php

declare(strict_types=1);

namespace Pier\Exception;

/**
 * Base of every exception Pier's worker API throws; catch this to handle them all.
 *
 * Not final: {@see RelayException} and {@see ProtocolException} extend it.
 */
class PierException extends \RuntimeException
{
}
