<?php

declare(strict_types=1);

namespace Pier\Tests;

/**
 * The frames in ../shared/relay-vectors.json, captured byte for byte from the reference PHP worker.
 */
final class Vectors
{
    /** The context every server_event_* vector carries. */
    public const REMOTE_ADDR = '127.0.0.1:50412';
    public const SERVER = 'smtp';
    public const UUID = '1c9d8f2a-4b7e-4d2c-9a51-0e6f3b2a7c10';

    /** @var array<string, string>|null name => bytes */
    private static ?array $frames = null;

    /**
     * The bytes of one vector.
     *
     * @param non-empty-string $name
     */
    public static function bytes(string $name): string
    {
        $frames = self::all();
        if (!isset($frames[$name])) {
            throw new \LogicException("no vector {$name} in relay-vectors.json");
        }

        return $frames[$name];
    }

    /**
     * @return array<string, string> every vector, name => bytes
     */
    public static function all(): array
    {
        if (self::$frames === null) {
            $path = \dirname(__DIR__, 3) . '/shared/relay-vectors.json';
            $json = file_get_contents($path);
            if ($json === false) {
                throw new \RuntimeException("could not read {$path}");
            }
            /** @var array{frames: array<string, array{hex: string, meaning: string}>} $data */
            $data = json_decode($json, true, 8, JSON_THROW_ON_ERROR);
            self::$frames = array_map(static fn (array $f): string => (string) hex2bin($f['hex']), $data['frames']);
        }

        return self::$frames;
    }

    /**
     * The server_event_* vectors with the request each must become: event name => [vector, event, body].
     *
     * @return array<string, array{string, string, string}>
     */
    public static function events(): array
    {
        return [
            'connected' => ['server_event_connected', 'CONNECTED', ''],
            'data' => ['server_event_data', 'DATA', "EHLO example.org\r\n"],
            'close' => ['server_event_close', 'CLOSE', ''],
        ];
    }

    /**
     * A TCP event as the server sends it; with a non-empty $state in Pier's two-option form.
     */
    public static function event(string $event, string $body, string $state = '', string $uuid = self::UUID, ?array $tls = null): string
    {
        $context = ['remote_addr' => self::REMOTE_ADDR, 'server' => self::SERVER, 'uuid' => $uuid, 'event' => $event];
        if ($tls !== null) {
            $context['tls'] = $tls;
        }
        $context = json_encode($context, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES);

        return $state === ''
            ? self::frame(0, [\strlen($context)], $context . $body)
            : self::frame(0, [\strlen($context), \strlen($state)], $context . $state . $body);
    }

    /**
     * A goridge v3 frame, written out independently of the package's encoder (so the tests do not
     * check the codec against itself).
     *
     * @param list<int> $options
     */
    public static function frame(int $flags, array $options, string $payload): string
    {
        $head = \chr(0x10 | (3 + \count($options))) . \chr($flags) . pack('V', \strlen($payload));
        $options = implode('', array_map(static fn (int $o): string => pack('V', $o), $options));

        return $head . pack('V', crc32($head)) . "\x00\x00" . $options . $payload;
    }
}
