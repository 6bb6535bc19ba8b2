<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

/**
 * Which implementation this run must be testing: PIER_IMPLEMENTATION=package (the default) or
 * extension, set by ./dev.sh test_php for each of its two runs.
 */
final class Implementation
{
    public static function expected(): string
    {
        $name = getenv('PIER_IMPLEMENTATION');

        return $name === false || $name === '' ? 'package' : $name;
    }
}
