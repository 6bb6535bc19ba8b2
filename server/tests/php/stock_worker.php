<?php

declare(strict_types=1);

/*
 * Stands in for "a worker built on the stock spiral/roadrunner-tcp packages, unchanged" (Packagist is
 * not reachable here). It writes exactly the bytes the stock stack writes, as pinned by
 * shared/relay-vectors.json: the pid answer with flags CONTROL only, replies with flags 0 and one
 * option (context length), the error frame, and one stray CLOSE reply after the stop frame.
 *
 * Behaviour (an echo server): CONNECTED → "php hello <server> <remote_addr>\n"; DATA "quit" →
 * WRITECLOSE "php bye\n"; DATA "error" → error frame; DATA "read" → CONTINUE; any other DATA →
 * "php:<packet>" (the packet keeps its delimiter); CLOSE → the uuid is appended to
 * $TW_DIR/php-closes.log and answered with CLOSE. An event with more than one option (which the
 * stock worker would misread) is answered with an error frame.
 */

final class StockRelay
{
    private string $buffer = '';

    public function __construct(private readonly mixed $in, private readonly mixed $out)
    {
    }

    /** @return array{int, list<int>, string}|null flags, options, payload; null at EOF */
    public function read(): ?array
    {
        $header = $this->take(12);
        if ($header === null) {
            return null;
        }
        $words = ord($header[0]) & 0x0f;
        $flags = ord($header[1]);
        $length = unpack('V', substr($header, 2, 4))[1];
        $crc = unpack('V', substr($header, 6, 4))[1];
        if ((ord($header[0]) >> 4) !== 1 || crc32(substr($header, 0, 6)) !== $crc) {
            throw new RuntimeException('corrupt frame header');
        }
        $options = [];
        if ($words > 3) {
            $raw = $this->take(($words - 3) * 4) ?? throw new RuntimeException('EOF in options');
            $options = array_values(unpack('V*', $raw));
        }
        $payload = $length > 0 ? ($this->take($length) ?? throw new RuntimeException('EOF in payload')) : '';
        return [$flags, $options, $payload];
    }

    /** @param list<int> $options */
    public function write(int $flags, array $options, string $payload): void
    {
        $head = chr(0x10 | (3 + count($options))) . chr($flags) . pack('V', strlen($payload));
        $frame = $head . pack('V', crc32($head)) . "\0\0";
        foreach ($options as $option) {
            $frame .= pack('V', $option);
        }
        $frame .= $payload;
        // One write per frame, as goridge does.
        fwrite($this->out, $frame);
        fflush($this->out);
    }

    private function take(int $n): ?string
    {
        while (strlen($this->buffer) < $n) {
            $chunk = fread($this->in, 65536);
            if ($chunk === false || $chunk === '') {
                if (feof($this->in)) {
                    return null;
                }
                continue;
            }
            $this->buffer .= $chunk;
        }
        $out = substr($this->buffer, 0, $n);
        $this->buffer = substr($this->buffer, $n);
        return $out;
    }
}

const CONTROL = 0x01;
const ERROR = 0x40;

$relay = new StockRelay(STDIN, STDOUT);
$reply = static function (string $context, string $body = '') use ($relay): void {
    $relay->write(0, [strlen($context)], $context . $body);
};
$dir = getenv('TW_DIR') ?: sys_get_temp_dir();

while (($frame = $relay->read()) !== null) {
    [$flags, $options, $payload] = $frame;
    if ($flags & CONTROL) {
        $control = json_decode($payload, true, 512, JSON_THROW_ON_ERROR);
        if (isset($control['stop'])) {
            // The stock TcpWorker answers the stop frame with one stray CLOSE before leaving.
            $reply('CLOSE');
            exit(0);
        }
        $relay->write(CONTROL, [], json_encode(['pid' => getmypid()], JSON_THROW_ON_ERROR));
        continue;
    }
    if (count($options) !== 1) {
        $relay->write(ERROR, [], 'stock worker got ' . count($options) . ' options');
        continue;
    }
    $context = json_decode(substr($payload, 0, $options[0]), true, 512, JSON_THROW_ON_ERROR);
    $body = substr($payload, $options[0]);
    switch ($context['event']) {
        case 'CONNECTED':
            $reply('WRITE', "php hello {$context['server']} {$context['remote_addr']}\n");
            break;
        case 'CLOSE':
            file_put_contents("$dir/php-closes.log", $context['uuid'] . "\n", FILE_APPEND | LOCK_EX);
            $reply('CLOSE');
            break;
        default:
            $packet = rtrim($body, "\r\n");
            match ($packet) {
                'quit' => $reply('WRITECLOSE', "php bye\n"),
                'read' => $reply('CONTINUE'),
                'error' => $relay->write(ERROR, [], 'php boom'),
                default => $reply('WRITE', 'php:' . $body),
            };
    }
}
