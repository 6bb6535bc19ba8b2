<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\TestCase;

/**
 * This run tests the implementation it claims to: the package when the extension is not loaded, the
 * extension's own classes (never asking the autoloader) when it is.
 */
final class ImplementationTest extends TestCase
{
    private const CLASSES = [
        'Pier\Worker', 'Pier\Tcp\TcpWorker', 'Pier\Tcp\TcpRequest', 'Pier\Tcp\TcpEvent', 'Pier\Tcp\TcpResponse',
        'Pier\Exception\PierException', 'Pier\Exception\RelayException', 'Pier\Exception\ProtocolException',
    ];

    public function testTheExpectedImplementationIsActive(): void
    {
        $extension = Implementation::expected() === 'extension';
        self::assertSame($extension, extension_loaded('pier'), 'extension_loaded(\'pier\')');

        $asked = [];
        $spy = static function (string $class) use (&$asked): void {
            $asked[] = $class;
        };
        spl_autoload_register($spy, true, true);
        try {
            foreach (self::CLASSES as $class) {
                self::assertTrue(class_exists($class) || enum_exists($class), "{$class} does not exist");
                $reflection = new \ReflectionClass($class);
                self::assertSame($extension, $reflection->isInternal(), "{$class} comes from the wrong implementation");
                if ($extension) {
                    self::assertSame('pier', $reflection->getExtensionName(), $class);
                } else {
                    self::assertStringStartsWith(\dirname(__DIR__, 2) . '/src/', (string) $reflection->getFileName(), $class);
                }
            }
        } finally {
            spl_autoload_unregister($spy);
        }
        $pierRequests = array_values(array_filter($asked, static fn (string $c): bool => \in_array($c, self::CLASSES, true)));
        self::assertSame([], $extension ? $pierRequests : [], 'with the extension loaded, the autoloader is never asked for its classes');
    }

    public function testAChildWorkerRunsTheSameImplementation(): void
    {
        $run = WorkerProcess::run([['wait']], '');

        self::assertSame(Implementation::expected(), $run->implementation(), $run->stderr);
        self::assertSame(0, $run->exitCode, $run->stderr);
    }
}
