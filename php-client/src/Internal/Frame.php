<?php

declare(strict_types=1);

namespace Pier\Internal;

use Pier\Exception\ProtocolException;

/**
 * One goridge v3 frame (PROTOCOL.md, "Frame"): the encoder, and the decoder of one frame at an offset.
 *
 * @internal not part of Pier's API
 */
final class Frame
{
    /** Control frame (handshake, stop). */
    public const CONTROL = 0x01;
    /** Payload is JSON. */
    public const CODEC_JSON = 0x08;
    /** The worker reports an error; payload = message. */
    public const ERROR = 0x40;

    /** Fixed header bytes before the options. */
    public const HEADER_SIZE = 12;

    /** Header length in 32-bit words without options. */
    private const MIN_WORDS = 3;
    /** At most 10 options. */
    private const MAX_WORDS = 13;

    /**
     * @param int<0, 255>       $flags
     * @param list<int<0, max>> $options
     */
    public function __construct(
        public readonly int $flags,
        public readonly array $options,
        public readonly string $payload,
    ) {
    }

    /**
     * The frame's bytes: header, CRC32 of its first six bytes, options, payload.
     *
     * @param int<0, 255>       $flags
     * @param list<int<0, max>> $options at most 10
     *
     * @return non-empty-string
     */
    public static function encode(int $flags, array $options, string $payload): string
    {
        return self::head($flags, $options, \strlen($payload)) . $payload;
    }

    /**
     * The bytes of a frame before its payload: header, CRC32 of its first six bytes, options.
     *
     * @param int<0, 255>       $flags
     * @param list<int<0, max>> $options at most 10
     *
     * @return non-empty-string
     */
    public static function head(int $flags, array $options, int $payloadLength): string
    {
        $head = pack('CCV', 0x10 | (self::MIN_WORDS + \count($options)), $flags, $payloadLength);

        return $head . pack('V', crc32($head)) . "\0\0" . ($options === [] ? '' : pack('V*', ...$options));
    }

    /**
     * The total size of the frame whose header starts at $offset, once its 12 header bytes are there.
     *
     * @return positive-int
     *
     * @throws ProtocolException when the header is not a goridge v3 header (version, length, CRC)
     */
    public static function sizeAt(string $buffer, int $offset): int
    {
        $first = \ord($buffer[$offset]);
        $words = $first & 0x0F;
        if ($first >> 4 !== 1) {
            throw new ProtocolException(sprintf('could not read a frame from the server: version %d (expected 1)', $first >> 4));
        }
        if ($words < self::MIN_WORDS || $words > self::MAX_WORDS) {
            throw new ProtocolException(sprintf('could not read a frame from the server: header length %d words (expected 3..13)', $words));
        }
        /** @var array{len: int, crc: int} $header */
        $header = unpack('Vlen/Vcrc', $buffer, $offset + 2);
        if (crc32(substr($buffer, $offset, 6)) !== $header['crc']) {
            throw new ProtocolException('could not read a frame from the server: header checksum mismatch (corrupt relay)');
        }

        return $words * 4 + $header['len'];
    }

    /**
     * The frame at $offset, which {@see sizeAt()} has checked and whose bytes are all in $buffer.
     */
    public static function at(string $buffer, int $offset, int $size): self
    {
        $words = \ord($buffer[$offset]) & 0x0F;
        /** @var list<int<0, max>> $options */
        $options = $words > self::MIN_WORDS
            ? array_values(unpack('V' . ($words - self::MIN_WORDS), $buffer, $offset + self::HEADER_SIZE))
            : [];
        /** @var int<0, 255> $flags */
        $flags = \ord($buffer[$offset + 1]);

        return new self($flags, $options, substr($buffer, $offset + $words * 4, $size - $words * 4));
    }
}
