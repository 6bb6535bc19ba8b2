<?php

declare(strict_types=1);

namespace Pier\Ext\Tests;

use Pier\Exception\PierException;
use Pier\Exception\ProtocolException;
use Pier\Exception\RelayException;
use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpRequest;
use Pier\Tcp\TcpResponse;
use Pier\Worker;
use PHPUnit\Framework\TestCase;

/** The value objects, enums, exceptions and stubs, in this process (no relay needed). */
final class ApiTest extends TestCase
{
    public function testEnumsAreRealBackedEnums(): void
    {
        self::assertSame(TcpEvent::Data, TcpEvent::from('DATA'));
        self::assertNull(TcpEvent::tryFrom('CLOSED'));
        self::assertSame(['CONNECTED', 'DATA', 'CLOSE', 'UNKNOWN'], array_map(static fn (TcpEvent $e): string => $e->value, TcpEvent::cases()));
        self::assertSame(['WRITE', 'WRITECLOSE', 'CONTINUE', 'CLOSE'], array_map(static fn (TcpResponse $r): string => $r->value, TcpResponse::cases()));
        self::assertSame(TcpResponse::Read, TcpResponse::from('CONTINUE'));
        self::assertTrue((new \ReflectionEnum(TcpResponse::class))->isBacked());
        $this->expectException(\ValueError::class);
        TcpResponse::from('WRITES');
    }

    public function testTcpRequestIsAReadonlyValueObjectWithBinaryFields(): void
    {
        $request = new TcpRequest(
            remoteAddr: '[::1]:4000',
            event: TcpEvent::Data,
            body: "\x00\xff\r\n",
            connectionUuid: 'u-1',
            server: 'smtp',
            state: "s\x00",
        );
        self::assertSame('[::1]:4000', $request->remoteAddr);
        self::assertSame(TcpEvent::Data, $request->event);
        self::assertSame("\x00\xff\r\n", $request->body);
        self::assertSame('u-1', $request->connectionUuid);
        self::assertSame('smtp', $request->server);
        self::assertSame("s\x00", $request->state);
        self::assertSame(
            [$request->remoteAddr, $request->event, $request->body, $request->connectionUuid, $request->server, $request->state],
            [$request->getRemoteAddress(), $request->getEvent(), $request->getBody(), $request->getConnectionUuid(), $request->getServer(), $request->getState()],
        );
        self::assertSame('', (new TcpRequest('a', TcpEvent::Close, '', 'u', 's'))->getState());
        self::assertTrue((new \ReflectionProperty(TcpRequest::class, 'body'))->isReadOnly());

        try {
            $request->body = 'changed';
            self::fail('a readonly property was written');
        } catch (\Error $e) {
            self::assertSame('Cannot modify readonly property Pier\Tcp\TcpRequest::$body', $e->getMessage());
        }
        self::assertSame("\x00\xff\r\n", $request->body);

        $copy = clone $request;
        self::assertEquals($request, $copy);
        self::assertNotSame($request, $copy);
        self::assertSame("s\x00", $copy->getState());
    }

    /** The properties are plain declared ones: the engine itself refuses what it refuses for a userland readonly object. */
    public function testTcpRequestPropertiesBehaveLikeUserlandReadonlyOnes(): void
    {
        $request = new TcpRequest('127.0.0.1:1', TcpEvent::Close, 'b', 'u', 's', 'st');
        $refused = [
            'unset' => static function () use ($request): void {
                unset($request->body);
            },
            'reference' => static function () use ($request): void {
                $body = &$request->body;
            },
            'constructor again' => static function () use ($request): void {
                $request->__construct('x', TcpEvent::Data, 'x', 'x', 'x');
            },
        ];
        foreach ($refused as $what => $do) {
            try {
                $do();
                self::fail("{$what} was allowed");
            } catch (\Error $e) {
                self::assertMatchesRegularExpression('/^Cannot (unset|modify) readonly property Pier\\\\Tcp\\\\TcpRequest::\$(body|remoteAddr)$/', $e->getMessage(), $what);
            }
        }
        self::assertSame(
            ['remoteAddr' => '127.0.0.1:1', 'event' => TcpEvent::Close, 'body' => 'b', 'connectionUuid' => 'u', 'server' => 's', 'state' => 'st'],
            get_object_vars($request),
        );
        self::assertTrue(isset($request->body));
        self::assertFalse(isset($request->tls));
        self::assertSame('{"remoteAddr":"127.0.0.1:1","event":"CLOSE","body":"b","connectionUuid":"u","server":"s","state":"st"}', json_encode($request));
        self::assertNull($request->getTls());
    }

    public function testExceptionsAreConstructibleAndFormAHierarchy(): void
    {
        $previous = new \LogicException('cause');
        $e = new ProtocolException('answering twice', 7, $previous);
        self::assertInstanceOf(PierException::class, $e);
        self::assertInstanceOf(\RuntimeException::class, $e);
        self::assertSame('answering twice', $e->getMessage());
        self::assertSame(7, $e->getCode());
        self::assertSame($previous, $e->getPrevious());
        self::assertInstanceOf(PierException::class, new RelayException('x'));
        self::assertTrue((new \ReflectionClass(RelayException::class))->isFinal());
        self::assertTrue((new \ReflectionClass(ProtocolException::class))->isFinal());
        self::assertFalse((new \ReflectionClass(PierException::class))->isFinal());
    }

    public function testAWorkerIsOnlyMadeByCreate(): void
    {
        self::assertTrue((new \ReflectionClass(Worker::class))->isFinal());
        $this->expectException(\Error::class);
        $this->expectExceptionMessage('Call to private Pier\Worker::__construct()');
        new Worker();
    }

    public function testVersionIsTheCratesAndFeaturesAreAListIncludingState(): void
    {
        $cargo = (string) file_get_contents(\dirname(__DIR__, 2) . '/Cargo.toml');
        self::assertSame(1, preg_match('/^\[workspace\.package\]\nversion = "([^"]+)"/m', $cargo, $m));
        self::assertSame($m[1], phpversion('pier'));

        $features = \Pier\features();
        self::assertTrue(array_is_list($features));
        self::assertContains('state', $features);
        self::assertSame(array_values(array_unique($features)), $features);

        $info = (string) shell_exec(escapeshellarg(PHP_BINARY) . ' --ri pier');
        self::assertStringContainsString("version => {$m[1]}\n", $info);
        self::assertStringContainsString('features => ' . implode(',', $features) . "\n", $info);
    }

    public function testTheStubsAreValidPhpAndDeclareExactlyWhatTheExtensionDoes(): void
    {
        $stubs = \dirname(__DIR__) . '/stubs/pier.stubs.php';
        exec(escapeshellarg(PHP_BINARY) . ' -n -l ' . escapeshellarg($stubs) . ' 2>&1', $out, $code);
        self::assertSame(0, $code, implode("\n", $out));

        // Compare declarations: load the stubs into a process WITHOUT the extension (-n) and
        // describe both sides with reflection.
        $describe = <<<'PHP'
            $out = [];
            foreach (['Pier\Worker', 'Pier\Tcp\TcpWorker', 'Pier\Tcp\TcpRequest', 'Pier\Tcp\TcpEvent', 'Pier\Tcp\TcpResponse',
                      'Pier\Tcp\Connections', 'Pier\Exception\PierException', 'Pier\Exception\RelayException', 'Pier\Exception\ProtocolException',
                      'Pier\Exception\RpcException'] as $c) {
                $r = new ReflectionClass($c);
                $lines = [];
                foreach ($r->getMethods() as $m) {
                    if ($m->getDeclaringClass()->getName() !== $c) { continue; }
                    $params = array_map(fn ($p) => $p->getType() . ' $' . $p->getName() . ($p->isDefaultValueAvailable() ? ' = ' . var_export($p->getDefaultValue(), true) : ''), $m->getParameters());
                    $lines[] = "  " . implode(' ', Reflection::getModifierNames($m->getModifiers())) . ' ' . $m->getName() . '(' . implode(', ', $params) . ')' . ($m->hasReturnType() ? ': ' . $m->getReturnType() : '');
                }
                foreach ($r->getProperties() as $p) {
                    if ($p->getDeclaringClass()->getName() !== $c) { continue; }
                    $lines[] = '  ' . implode(' ', Reflection::getModifierNames($p->getModifiers())) . ' ' . $p->getType() . ' $' . $p->getName();
                }
                sort($lines);
                $out[] = ($r->isFinal() ? 'final ' : '') . $c . ' < ' . ($r->getParentClass() ? $r->getParentClass()->getName() : '-');
                array_push($out, ...$lines);
            }
            foreach (['Pier\features'] as $f) {
                $r = new ReflectionFunction($f);
                $out[] = 'function ' . $r->getName() . '(' . $r->getNumberOfParameters() . ' parameters): ' . $r->getReturnType();
            }
            echo implode("\n", $out);
            PHP;
        $fromStubs = shell_exec(escapeshellarg(PHP_BINARY) . ' -n -r ' . escapeshellarg('require ' . var_export($stubs, true) . ';' . $describe));
        $fromExtension = shell_exec(escapeshellarg(PHP_BINARY) . ' -r ' . escapeshellarg($describe));
        self::assertIsString($fromExtension);
        self::assertStringContainsString('final Pier\Tcp\TcpWorker', $fromExtension);
        self::assertSame($fromExtension, $fromStubs);
    }
}
