<?php

declare(strict_types=1);

namespace Pier\Exception;

/**
 * The transport to the server failed: it closed in the middle of a frame, a write failed, or the
 * relay named by RR_RELAY could not be opened. The worker cannot go on; let the script exit.
 */
final class RelayException extends PierException
{
}
