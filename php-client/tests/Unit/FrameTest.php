<?php

declare(strict_types=1);

namespace Pier\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Pier\Exception\ProtocolException;
use Pier\Internal\Frame;
use Pier\Tests\Vectors;

final class FrameTest extends TestCase
{
    /**
     * @return iterable<string, array{string}>
     */
    public static function vectors(): iterable
    {
        foreach (array_keys(Vectors::all()) as $name) {
            yield $name => [$name];
        }
    }

    /**
     * @dataProvider vectors
     */
    public function testEveryVectorDecodesAndReencodesToTheSameBytes(string $name): void
    {
        $bytes = Vectors::bytes($name);
        $size = Frame::sizeAt($bytes, 0);
        self::assertSame(\strlen($bytes), $size);
        $frame = Frame::at($bytes, 0, $size);

        self::assertSame($bytes, Frame::encode($frame->flags, $frame->options, $frame->payload));
    }

    public function testVectorFieldsAreWhatTheirMeaningSays(): void
    {
        $error = Frame::at(Vectors::bytes('worker_error'), 0, 16);
        self::assertSame([Frame::ERROR, [], 'boom'], [$error->flags, $error->options, $error->payload]);

        $pid = Vectors::bytes('worker_pid_reply_example');
        $reply = Frame::at($pid, 0, \strlen($pid));
        self::assertSame([Frame::CONTROL, [], '{"pid":15621}'], [$reply->flags, $reply->options, $reply->payload]);

        $stop = Vectors::bytes('server_stop');
        $request = Frame::at($stop, 0, \strlen($stop));
        self::assertSame([Frame::CONTROL | Frame::CODEC_JSON, [], '{"stop":true}'], [$request->flags, $request->options, $request->payload]);

        $hello = Vectors::bytes('worker_respond_write_hello');
        $write = Frame::at($hello, 0, \strlen($hello));
        self::assertSame([0, [5], "WRITEhello\r\n"], [$write->flags, $write->options, $write->payload]);
    }

    public function testAFrameInsideABufferIsReadAtItsOffset(): void
    {
        $buffer = Vectors::bytes('worker_close') . Vectors::bytes('worker_respond_binary');
        $first = Frame::sizeAt($buffer, 0);
        $second = Frame::at($buffer, $first, Frame::sizeAt($buffer, $first));

        self::assertSame([[5], "WRITE\x00\xff\r\n"], [$second->options, $second->payload]);
    }

    public function testTwoOptionsForTheStateExtension(): void
    {
        $bytes = Frame::encode(0, [5, 3], "WRITE\x00s\xffbody");

        self::assertSame(Vectors::frame(0, [5, 3], "WRITE\x00s\xffbody"), $bytes);
        self::assertSame(0x15, \ord($bytes[0]));
        self::assertSame([5, 3], Frame::at($bytes, 0, \strlen($bytes))->options);
    }

    /**
     * @return iterable<string, array{string, string}>
     */
    public static function corruptHeaders(): iterable
    {
        $good = Vectors::bytes('worker_close');
        yield 'checksum' => [substr_replace($good, "\x06", 2, 1), 'checksum mismatch'];
        yield 'version 2' => ["\x23" . substr($good, 1), 'version 2'];
        yield 'header length 2' => ["\x12" . substr($good, 1), 'header length 2 words'];
        yield 'header length 14' => ["\x1e" . substr($good, 1), 'header length 14 words'];
    }

    /**
     * @dataProvider corruptHeaders
     */
    public function testACorruptHeaderIsAProtocolError(string $bytes, string $message): void
    {
        $this->expectException(ProtocolException::class);
        $this->expectExceptionMessage($message);

        Frame::sizeAt($bytes, 0);
    }
}
