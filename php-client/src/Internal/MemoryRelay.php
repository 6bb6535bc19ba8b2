<?php

declare(strict_types=1);

namespace Pier\Internal;

use Pier\Exception\RelayException;

/**
 * A relay in memory: the server's bytes are given up front, in the chunks a pipe would deliver them,
 * and every write is recorded. For tests and for driving a worker without a server.
 *
 * @internal not part of Pier's API
 */
final class MemoryRelay implements Relay
{
    /** @var list<string> the bytes still to deliver, one element per read() */
    private array $input;

    /** How much of $input[0] read() has returned already. */
    private int $offset = 0;

    /** @var list<string> every write, in order: one element per frame sent */
    private array $writes = [];

    /** Whether write() fails, as a pipe whose reader is gone does. */
    private bool $broken = false;

    /**
     * @param list<string> $chunks the server's bytes, split as read() should return them
     */
    public function __construct(array $chunks = [])
    {
        $this->input = array_values(array_filter($chunks, static fn (string $c): bool => $c !== ''));
    }

    /** Adds bytes for later read() calls. */
    public function push(string $bytes): void
    {
        if ($bytes !== '') {
            $this->input[] = $bytes;
        }
    }

    /** Makes every later write() fail. */
    public function breakWrites(): void
    {
        $this->broken = true;
    }

    /**
     * @return list<string> one element per frame written
     */
    public function writes(): array
    {
        return $this->writes;
    }

    public function read(int $atMost): string
    {
        while ($this->input !== [] && $this->offset >= \strlen($this->input[0])) {
            array_shift($this->input);
            $this->offset = 0;
        }
        if ($this->input === []) {
            return '';
        }
        // An offset into the current chunk rather than re-slicing it: a large input stays linear.
        $chunk = substr($this->input[0], $this->offset, $atMost);
        $this->offset += \strlen($chunk);

        return $chunk;
    }

    public function write(string $frame): void
    {
        if ($this->broken) {
            throw new RelayException('could not write to the relay: the memory relay is broken');
        }
        $this->writes[] = $frame;
    }
}
