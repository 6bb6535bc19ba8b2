<?php

declare(strict_types=1);

namespace Pier\Ext\Tests\Support;

/**
 * The test side of the relay: the shared vectors, and a small independent goridge encoder/reader
 * used only to build inputs and read the worker's output (the extension itself uses pier-protocol).
 */
final class Frames
{
    public const UUID = '1c9d8f2a-4b7e-4d2c-9a51-0e6f3b2a7c10';

    /** @var array<string, string>|null */
    private static ?array $vectors = null;

    /** The bytes of the shared vector `$name` (../shared/relay-vectors.json). */
    public static function vector(string $name): string
    {
        if (self::$vectors === null) {
            $path = \dirname(__DIR__, 4) . '/shared/relay-vectors.json';
            $json = json_decode((string) file_get_contents($path), true, 512, JSON_THROW_ON_ERROR);
            self::$vectors = [];
            foreach ($json['frames'] as $key => $frame) {
                self::$vectors[$key] = (string) hex2bin($frame['hex']);
            }
        }

        return self::$vectors[$name] ?? throw new \LogicException("no vector {$name}");
    }

    /** @return list<string> */
    public static function vectorNames(): array
    {
        self::vector('server_stop');

        return array_keys((array) self::$vectors);
    }

    /** @param list<int> $options */
    public static function encode(int $flags, array $options, string $payload): string
    {
        $head = pack('CCV', (1 << 4) | (3 + \count($options)), $flags, \strlen($payload));
        $head .= pack('V', crc32($head)) . "\0\0";
        foreach ($options as $option) {
            $head .= pack('V', $option);
        }

        return $head . $payload;
    }

    /** A server event, with the state in option 1 when it is non-empty (Pier extension). */
    public static function event(
        string $event,
        string $body,
        string $state = '',
        string $server = 'smtp',
        string $remoteAddr = '127.0.0.1:50412',
        string $uuid = self::UUID,
    ): string {
        $context = json_encode(
            ['remote_addr' => $remoteAddr, 'server' => $server, 'uuid' => $uuid, 'event' => $event],
            JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR,
        );
        $options = $state === '' ? [\strlen($context)] : [\strlen($context), \strlen($state)];

        return self::encode(0, $options, $context . $state . $body);
    }

    public static function pidRequest(int $pid): string
    {
        return self::encode(0x01 | 0x08, [], '{"pid":' . $pid . '}');
    }

    /** A worker reply, with the state in option 1 when given. */
    public static function reply(string $context, string $body, ?string $state = null): string
    {
        $options = $state === null ? [\strlen($context)] : [\strlen($context), \strlen($state)];

        return self::encode(0, $options, $context . ($state ?? '') . $body);
    }

    /**
     * Splits a byte stream into whole frames.
     *
     * @return list<array{flags: int, options: list<int>, payload: string, bytes: string}>
     */
    public static function split(string $stream): array
    {
        $frames = [];
        $at = 0;
        while ($at < \strlen($stream)) {
            $words = \ord($stream[$at]) & 0x0f;
            $len = unpack('V', $stream, $at + 2)[1];
            $headerLen = $words * 4;
            if ($at + $headerLen + $len > \strlen($stream)) {
                throw new \RuntimeException('incomplete frame at byte ' . $at);
            }
            $options = $words > 3 ? array_values(unpack('V' . ($words - 3), $stream, $at + 12)) : [];
            $frames[] = [
                'flags' => \ord($stream[$at + 1]),
                'options' => $options,
                'payload' => substr($stream, $at + $headerLen, $len),
                'bytes' => substr($stream, $at, $headerLen + $len),
            ];
            $at += $headerLen + $len;
        }

        return $frames;
    }
}
