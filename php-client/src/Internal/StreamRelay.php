<?php

declare(strict_types=1);

namespace Pier\Internal;

use Pier\Exception\RelayException;

/**
 * The relay over PHP streams: fd 0 / fd 1 for pipes, or one socket for tcp:// and unix://.
 *
 * @internal not part of Pier's API
 */
final class StreamRelay implements Relay
{
    /**
     * @param resource $in  where the server's frames arrive ({@see Session} reads it directly on its
     *                      hot path and calls read() for everything else)
     * @param resource $out where this worker's frames go (written directly by Session the same way)
     */
    public function __construct(
        public readonly mixed $in,
        public readonly mixed $out,
    ) {
        // Unbuffered: each fread() is one read() of the relay into the string it returns. PHP's
        // read buffer (8 KiB chunks) would copy every event once more, and a buffered fread() asking
        // for more than that buffer holds reads the relay again, which blocks while the server waits
        // for this worker's answers: reads could only ask for at least a chunk, a 64 KiB string
        // allocated per event.
        stream_set_read_buffer($in, 0);
    }

    /**
     * The relay RR_RELAY names: "pipes" (also when unset), "tcp://host:port" or "unix:///path".
     *
     * @throws RelayException when RR_RELAY names something else or the socket cannot be connected
     */
    public static function fromEnvironment(): self
    {
        $spec = getenv('RR_RELAY');
        if ($spec === false || $spec === '' || $spec === 'pipes') {
            return self::pipes();
        }
        if (str_starts_with($spec, 'tcp://') || str_starts_with($spec, 'unix://')) {
            return self::socket($spec);
        }

        throw new RelayException(sprintf(
            'could not open the relay: RR_RELAY=%s is not "pipes", "tcp://host:port" or "unix:///path"',
            json_encode($spec, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE),
        ));
    }

    /**
     * fd 0 and fd 1, raw: PHP's output layer (echo) never reaches them, only this relay's writes do.
     *
     * @throws RelayException
     */
    public static function pipes(): self
    {
        $in = \defined('STDIN') ? \STDIN : @fopen('php://stdin', 'rb');
        $out = \defined('STDOUT') ? \STDOUT : @fopen('php://stdout', 'wb');
        if ($in === false || $out === false) {
            throw new RelayException('could not open the pipe relay (php://stdin, php://stdout)');
        }

        return new self($in, $out);
    }

    /**
     * @param non-empty-string $address "tcp://host:port" or "unix:///path"
     *
     * @throws RelayException
     */
    public static function socket(string $address): self
    {
        $errno = 0;
        $error = '';
        $socket = @stream_socket_client($address, $errno, $error, 30.0);
        if ($socket === false) {
            throw new RelayException(sprintf('could not connect to the relay %s: %s (errno %d)', $address, $error, $errno));
        }

        return new self($socket, $socket);
    }

    public function read(int $atMost): string
    {
        // A blocking stream returns '' only at end of stream, after a socket read timeout
        // (default_socket_timeout) or an interrupted read: only the first ends the relay.
        while (true) {
            $chunk = @fread($this->in, $atMost);
            if ($chunk === false) {
                throw new RelayException('could not read from the relay: ' . self::lastError());
            }
            if ($chunk !== '' || feof($this->in)) {
                return $chunk;
            }
        }
    }

    public function write(string $frame): void
    {
        // fwrite on a blocking stream writes everything at once; the loop only guards against a partial
        // write (a signal), so the frame is never cut.
        while (true) {
            $written = @fwrite($this->out, $frame);
            if ($written === \strlen($frame)) {
                return;
            }
            if ($written === false || $written === 0) {
                throw new RelayException('could not write to the relay: ' . self::lastError());
            }
            $frame = substr($frame, $written);
        }
    }

    private static function lastError(): string
    {
        return error_get_last()['message'] ?? 'the stream is closed';
    }
}
