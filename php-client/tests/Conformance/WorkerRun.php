<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

/**
 * What a finished worker process wrote.
 */
final class WorkerRun
{
    /**
     * @param string                           $stdout everything it wrote to fd 1 (only frames, if it is right)
     * @param string                           $stderr everything it wrote to fd 2
     * @param list<array<array-key, mixed>>    $report the fixture's report lines after the first (which
     *                                                 names the implementation)
     * @param int                              $exitCode
     */
    public function __construct(
        public readonly string $stdout,
        public readonly string $stderr,
        public readonly array $report,
        public readonly int $exitCode,
        public readonly int $pid,
    ) {
    }

    /**
     * The report lines of the steps: without the implementation line first and the end line last.
     *
     * @return list<array<array-key, mixed>>
     */
    public function steps(): array
    {
        $steps = \array_slice($this->report, 1);
        if (end($steps) === ['end' => true]) {
            array_pop($steps);
        }

        return $steps;
    }

    /** "package" or "extension", as the child saw it. */
    public function implementation(): string
    {
        return (string) ($this->report[0]['implementation'] ?? 'none (the worker did not start)');
    }
}
