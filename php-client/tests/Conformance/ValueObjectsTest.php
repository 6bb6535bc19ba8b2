<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\TestCase;
use Pier\Exception\PierException;
use Pier\Exception\ProtocolException;
use Pier\Exception\RelayException;
use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpRequest;
use Pier\Tcp\TcpResponse;
use Pier\Worker;

/**
 * What user code does with the classes besides the worker loop: build requests (in its own tests),
 * catch and throw the exceptions, use the enums.
 */
final class ValueObjectsTest extends TestCase
{
    public function testARequestIsBuiltWithNamedArgumentsAndReadBack(): void
    {
        $request = new TcpRequest(
            remoteAddr: '[::1]:4000',
            event: TcpEvent::Data,
            body: "\x00\xff\r\n",
            connectionUuid: 'c0ffee00-0000-4000-8000-000000000000',
            server: 'echo',
            state: "s\x00",
        );

        self::assertSame(
            ['[::1]:4000', TcpEvent::Data, "\x00\xff\r\n", 'c0ffee00-0000-4000-8000-000000000000', 'echo', "s\x00"],
            [$request->remoteAddr, $request->event, $request->body, $request->connectionUuid, $request->server, $request->state],
        );
        self::assertSame(
            ['[::1]:4000', TcpEvent::Data, "\x00\xff\r\n", 'c0ffee00-0000-4000-8000-000000000000', 'echo', "s\x00"],
            [$request->getRemoteAddress(), $request->getEvent(), $request->getBody(), $request->getConnectionUuid(), $request->getServer(), $request->getState()],
        );
        self::assertSame('', (new TcpRequest('a', TcpEvent::Close, '', 'u', 's'))->getState(), 'state defaults to empty');
    }

    /**
     * @return iterable<string, array{string, mixed}>
     */
    public static function properties(): iterable
    {
        yield 'remoteAddr' => ['remoteAddr', 'x'];
        yield 'event' => ['event', TcpEvent::Close];
        yield 'body' => ['body', 'x'];
        yield 'connectionUuid' => ['connectionUuid', 'x'];
        yield 'server' => ['server', 'x'];
        yield 'state' => ['state', 'x'];
    }

    /**
     * @dataProvider properties
     */
    public function testRequestPropertiesAreReadonly(string $property, mixed $value): void
    {
        $request = new TcpRequest('127.0.0.1:1', TcpEvent::Data, 'body', 'uuid', 'server', 'state');

        $this->expectException(\Error::class);
        $this->expectExceptionMessage('Cannot modify readonly property Pier\Tcp\TcpRequest::$' . $property);

        $request->{$property} = $value;
    }

    public function testAWrongArgumentTypeIsATypeError(): void
    {
        $this->expectException(\TypeError::class);

        /** @psalm-suppress InvalidArgument on purpose */
        new TcpRequest('127.0.0.1:1', 'DATA', 'body', 'uuid', 'server'); // @phpstan-ignore-line
    }

    public function testAWorkerIsOnlyMadeByCreate(): void
    {
        $this->expectException(\Error::class);

        /** @psalm-suppress InaccessibleMethod on purpose */
        new Worker(); // @phpstan-ignore-line
    }

    /**
     * @return iterable<string, array{class-string<PierException>}>
     */
    public static function exceptions(): iterable
    {
        yield 'PierException' => [PierException::class];
        yield 'RelayException' => [RelayException::class];
        yield 'ProtocolException' => [ProtocolException::class];
    }

    /**
     * @dataProvider exceptions
     *
     * @param class-string<PierException> $class
     */
    public function testExceptionsAreBuiltAndCaughtLikeRuntimeExceptions(string $class): void
    {
        $previous = new \LogicException('cause');
        $exception = new $class('could not do it', 7, $previous);

        self::assertInstanceOf(\RuntimeException::class, $exception);
        self::assertInstanceOf(PierException::class, $exception);
        self::assertSame(['could not do it', 7, $previous], [$exception->getMessage(), $exception->getCode(), $exception->getPrevious()]);
        self::assertSame('', (new $class())->getMessage());
    }

    public function testEnumsMapTheirWireValues(): void
    {
        self::assertSame(TcpEvent::Close, TcpEvent::from('CLOSE'));
        self::assertNull(TcpEvent::tryFrom('CLOSED'));
        self::assertSame(['WRITE', 'WRITECLOSE', 'CONTINUE', 'CLOSE'], array_map(static fn (TcpResponse $r): string => $r->value, TcpResponse::cases()));
        self::assertSame(['CONNECTED', 'DATA', 'CLOSE', 'UNKNOWN'], array_map(static fn (TcpEvent $e): string => $e->value, TcpEvent::cases()));
    }
}
