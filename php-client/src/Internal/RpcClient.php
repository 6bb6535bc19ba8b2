<?php

declare(strict_types=1);

namespace Pier\Internal;

use Pier\Exception\ProtocolException;
use Pier\Exception\RpcException;

/**
 * A goridge RPC client with the JSON codec, framing requests exactly as the stock PHP client
 * (spiral/goridge 4.2, RPC::call) does: flags CODEC_JSON, options [sequence, length of the method name],
 * payload = method name ‖ JSON argument; sequence numbers start at 1 in each process and grow by one
 * per call. It accepts an answer whose first option is the call's sequence number, strips the method
 * name the second option measures, and throws the text of an ERROR answer.
 *
 * One socket, opened on the first call and kept; any failure closes it, and the next call reconnects.
 *
 * @internal not part of Pier's API
 */
final class RpcClient
{
    /** Flags of an answer carrying an error text instead of a result. */
    private const ERROR = 0x40;

    /** The largest answer accepted, in bytes: a full page of pier.List is far below it. */
    public const MAX_ANSWER = 16 << 20;

    /** Seconds to wait for the connection to the RPC listener. */
    private const CONNECT_TIMEOUT = 10.0;

    /** Seconds to wait for the server's bytes before the call fails. */
    private const IO_TIMEOUT = 30;

    /** The last sequence number used in this process (the stock client's counter is per process too). */
    private static int $sequence = 0;

    /** @var resource|null the connection, null until the first call and after a failure */
    private $socket = null;

    /**
     * @param non-empty-string $address "tcp://host:port" or "unix:///path"
     */
    private function __construct(
        private readonly string $address,
    ) {
    }

    /**
     * @throws RpcException when $address is not tcp://host:port or unix:///path
     */
    public static function to(string $address): self
    {
        if (preg_match('~^tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):([0-9]{1,5})$~', $address, $m) === 1 && (int) $m[2] <= 65535) {
            return new self($address);
        }
        if (preg_match('~^unix://(/.+|[^/].*)$~', $address) === 1) {
            return new self($address);
        }

        throw new RpcException(sprintf('could not use the RPC address %s: expected tcp://host:port or unix:///path', json_encode($address, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE)));
    }

    /**
     * Calls $method with $argument (encoded as JSON) and returns the decoded result (objects as arrays).
     *
     * @param non-empty-string $method
     *
     * @throws RpcException
     */
    public function call(string $method, mixed $argument): mixed
    {
        try {
            $json = json_encode($argument, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_LINE_TERMINATORS | JSON_PRESERVE_ZERO_FRACTION);
        } catch (\JsonException $e) {
            // Only a string that is not UTF-8 gets here (binary data travels as data_b64).
            throw new RpcException("could not call {$method}: a string in its argument is not UTF-8", 0, $e);
        }
        $sequence = ++self::$sequence;
        $socket = $this->socket ?? $this->connect($method);
        try {
            $this->write($socket, Frame::encode(Frame::CODEC_JSON, [$sequence, \strlen($method)], $method . $json));
            $answer = $this->answer($socket);
        } catch (RpcException $e) {
            $this->disconnect();

            throw new RpcException("could not call {$method} on {$this->address}: {$e->getMessage()}", 0, $e);
        }

        return self::result($method, $sequence, $answer);
    }

    /**
     * Closes the connection (the next call opens a new one).
     */
    public function disconnect(): void
    {
        if ($this->socket !== null) {
            fclose($this->socket);
            $this->socket = null;
        }
    }

    /**
     * @throws RpcException
     */
    private static function result(string $method, int $sequence, Frame $answer): mixed
    {
        $options = $answer->options;
        if (\count($options) < 2 || $options[0] !== $sequence || $options[1] > \strlen($answer->payload)) {
            throw new RpcException(sprintf('could not call %s: the answer does not belong to call %d (options [%s])', $method, $sequence, implode(', ', $options)));
        }
        $body = substr($answer->payload, $options[1]);
        if (($answer->flags & self::ERROR) !== 0) {
            throw new RpcException($body);
        }
        if (($answer->flags & Frame::CODEC_JSON) === 0) {
            throw new RpcException(sprintf('could not call %s: the answer is not JSON (flags 0x%02x)', $method, $answer->flags));
        }
        try {
            return json_decode($body, true, 64, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new RpcException("could not call {$method}: its answer is not JSON: {$e->getMessage()}", 0, $e);
        }
    }

    /**
     * @return resource
     *
     * @throws RpcException
     */
    private function connect(string $method)
    {
        $errno = 0;
        $error = '';
        $socket = @stream_socket_client($this->address, $errno, $error, self::CONNECT_TIMEOUT);
        if ($socket === false) {
            throw new RpcException(sprintf('could not call %s: could not connect to %s: %s (errno %d)', $method, $this->address, $error, $errno));
        }
        stream_set_timeout($socket, self::IO_TIMEOUT);

        return $this->socket = $socket;
    }

    /**
     * @param resource $socket
     *
     * @throws RpcException
     */
    private function write($socket, string $bytes): void
    {
        while ($bytes !== '') {
            $written = @fwrite($socket, $bytes);
            if ($written === false || $written === 0) {
                throw new RpcException('the connection failed while sending: ' . (error_get_last()['message'] ?? 'closed'));
            }
            $bytes = substr($bytes, $written);
        }
    }

    /**
     * @param resource $socket
     *
     * @throws RpcException
     */
    private function answer($socket): Frame
    {
        $header = $this->read($socket, Frame::HEADER_SIZE);
        try {
            $size = Frame::sizeAt($header, 0);
        } catch (ProtocolException $e) {
            throw new RpcException('the answer is not a goridge frame: ' . $e->getMessage(), 0, $e);
        }
        if ($size - Frame::HEADER_SIZE > self::MAX_ANSWER) {
            throw new RpcException(sprintf('the answer is %d bytes, more than the %d accepted', $size, self::MAX_ANSWER));
        }

        return Frame::at($header . $this->read($socket, $size - Frame::HEADER_SIZE), 0, $size);
    }

    /**
     * Exactly $length bytes.
     *
     * @param resource $socket
     *
     * @throws RpcException
     */
    private function read($socket, int $length): string
    {
        $bytes = '';
        while (\strlen($bytes) < $length) {
            $chunk = @fread($socket, $length - \strlen($bytes));
            if ($chunk === false || $chunk === '') {
                if (stream_get_meta_data($socket)['timed_out']) {
                    throw new RpcException(sprintf('no answer within %d s', self::IO_TIMEOUT));
                }
                if ($chunk === false || feof($socket)) {
                    throw new RpcException('the server closed the connection before answering');
                }
                continue;
            }
            $bytes .= $chunk;
        }

        return $bytes;
    }
}
