<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\TestCase;

/**
 * The public API, as reflection sees it, is exactly the brief's — in whichever implementation is active.
 */
final class PublicApiTest extends TestCase
{
    /**
     * Every public class, with what reflection must show: its declaration, then every public method and
     * property it declares itself (inherited ones are the parent's business), then enum cases.
     *
     * @var array<class-string, list<string>>
     */
    private const EXPECTED = [
        'Pier\Worker' => [
            'final class Pier\Worker',
            'public static function create(): Pier\Worker',
            'public function error(string $message): void',
            'public function stop(): void',
        ],
        'Pier\Tcp\TcpWorker' => [
            'final class Pier\Tcp\TcpWorker',
            'public function __construct(Pier\Worker $worker)',
            'public static function create(): Pier\Tcp\TcpWorker',
            'public function getWorker(): Pier\Worker',
            'public function waitRequest(): ?Pier\Tcp\TcpRequest',
            'public function respond(string $body, Pier\Tcp\TcpResponse $response = Pier\Tcp\TcpResponse::Respond): void',
            'public function read(): void',
            'public function close(): void',
            'public function setState(string $state): void',
            'public function setIdleTimeout(?int $milliseconds = NULL): void',
            'public function send(string $uuid, string $data): void',
            'public function broadcast(string $data, ?string $group = NULL, array $except = array (' . "\n" . ')): void',
            'public function join(string $group, ?string $uuid = NULL): void',
            'public function leave(string $group, ?string $uuid = NULL): void',
            'public function disconnect(string $uuid): void',
            'public function startTls(): void',
        ],
        'Pier\Tcp\Connections' => [
            'final class Pier\Tcp\Connections',
            'public function __construct(string $address)',
            'public static function fromEnvironment(): Pier\Tcp\Connections',
            'public function send(string $uuid, string $data): bool',
            'public function broadcast(string $data, ?string $group = NULL, ?string $server = NULL, array $except = array (' . "\n" . ')): int',
            'public function join(string $group, string $uuid): bool',
            'public function leave(string $group, string $uuid): bool',
            'public function close(string $uuid): bool',
            'public function list(?string $server = NULL, ?string $group = NULL, int $offset = 0, int $limit = 100): array',
            'public function info(string $uuid): ?array',
            'public function count(?string $server = NULL, ?string $group = NULL): int',
            'public function groups(?string $server = NULL): array',
        ],
        'Pier\Tcp\TcpRequest' => [
            'final class Pier\Tcp\TcpRequest',
            "public function __construct(string \$remoteAddr, Pier\\Tcp\\TcpEvent \$event, string \$body, string \$connectionUuid, string \$server, string \$state = '')",
            'public function getRemoteAddress(): string',
            'public function getEvent(): Pier\Tcp\TcpEvent',
            'public function getBody(): string',
            'public function getConnectionUuid(): string',
            'public function getServer(): string',
            'public function getState(): string',
            'public function getTls(): ?array',
            'public readonly string $remoteAddr',
            'public readonly Pier\Tcp\TcpEvent $event',
            'public readonly string $body',
            'public readonly string $connectionUuid',
            'public readonly string $server',
            'public readonly string $state',
        ],
        'Pier\Tcp\TcpEvent' => [
            'enum Pier\Tcp\TcpEvent: string',
            "case Connected = 'CONNECTED'",
            "case Data = 'DATA'",
            "case Close = 'CLOSE'",
            "case Unknown = 'UNKNOWN'",
        ],
        'Pier\Tcp\TcpResponse' => [
            'enum Pier\Tcp\TcpResponse: string',
            "case Respond = 'WRITE'",
            "case RespondClose = 'WRITECLOSE'",
            "case Read = 'CONTINUE'",
            "case Close = 'CLOSE'",
        ],
        'Pier\Exception\PierException' => ['class Pier\Exception\PierException extends RuntimeException'],
        'Pier\Exception\RelayException' => ['final class Pier\Exception\RelayException extends Pier\Exception\PierException'],
        'Pier\Exception\ProtocolException' => ['final class Pier\Exception\ProtocolException extends Pier\Exception\PierException'],
        'Pier\Exception\RpcException' => ['final class Pier\Exception\RpcException extends Pier\Exception\PierException'],
    ];

    /**
     * @return iterable<string, array{class-string, list<string>}>
     */
    public static function classes(): iterable
    {
        foreach (self::EXPECTED as $class => $api) {
            yield $class => [$class, $api];
        }
    }

    /**
     * @dataProvider classes
     *
     * @param class-string  $class
     * @param list<string>  $expected
     */
    public function testTheClassIsExactlyTheBriefs(string $class, array $expected): void
    {
        self::assertTrue(class_exists($class) || enum_exists($class), "{$class} does not exist");
        $actual = self::describe(new \ReflectionClass($class));

        sort($expected);
        sort($actual);
        self::assertSame($expected, $actual);
    }

    public function testThereIsNoOtherPublicClass(): void
    {
        if (Implementation::expected() === 'extension') {
            $classes = (new \ReflectionExtension('pier'))->getClassNames();
        } else {
            $src = \dirname(__DIR__, 2) . '/src/';
            $classes = [];
            $files = new \RecursiveIteratorIterator(new \RecursiveDirectoryIterator($src, \FilesystemIterator::SKIP_DOTS));
            foreach ($files as $file) {
                $name = 'Pier\\' . str_replace('/', '\\', substr((string) $file, \strlen($src), -4));
                if (str_starts_with($name, 'Pier\Internal\\')) {
                    self::assertStringContainsString('@internal', (string) file_get_contents((string) $file), "{$name} is not marked @internal");
                } else {
                    $classes[] = $name;
                }
            }
        }
        $expected = array_keys(self::EXPECTED);
        sort($classes);
        sort($expected);

        self::assertSame($expected, $classes);
    }

    /**
     * @return list<string>
     */
    private static function describe(\ReflectionClass $class): array
    {
        $lines = [];
        if ($class->isEnum()) {
            $enum = new \ReflectionEnum($class->getName());
            $lines[] = 'enum ' . $class->getName() . ($enum->isBacked() ? ': ' . (string) $enum->getBackingType() : '');
            foreach ($enum->getCases() as $case) {
                $lines[] = 'case ' . $case->getName() . ($case instanceof \ReflectionEnumBackedCase ? ' = ' . var_export($case->getBackingValue(), true) : '');
            }

            return $lines;
        }
        $parent = $class->getParentClass();
        $lines[] = ($class->isFinal() ? 'final ' : '') . ($class->isAbstract() ? 'abstract ' : '') . 'class ' . $class->getName()
            . ($parent !== false ? ' extends ' . $parent->getName() : '');
        foreach ($class->getMethods(\ReflectionMethod::IS_PUBLIC) as $method) {
            if ($method->getDeclaringClass()->getName() === $class->getName()) {
                $lines[] = self::method($method);
            }
        }
        foreach ($class->getProperties(\ReflectionProperty::IS_PUBLIC) as $property) {
            if ($property->getDeclaringClass()->getName() === $class->getName()) {
                $lines[] = 'public ' . ($property->isStatic() ? 'static ' : '') . ($property->isReadOnly() ? 'readonly ' : '')
                    . self::type($property->getType(), $class) . ' $' . $property->getName();
            }
        }

        return $lines;
    }

    private static function method(\ReflectionMethod $method): string
    {
        $params = [];
        foreach ($method->getParameters() as $param) {
            $text = self::type($param->getType(), $method->getDeclaringClass()) . ' $' . $param->getName();
            if ($param->isDefaultValueAvailable()) {
                $text .= ' = ' . self::value($param);
            } elseif ($param->isOptional()) {
                $text .= ' = <optional without a default>';
            }
            $params[] = $text;
        }
        $return = $method->getName() === '__construct' ? '' : ': ' . self::type($method->getReturnType(), $method->getDeclaringClass());

        return 'public ' . ($method->isStatic() ? 'static ' : '') . ($method->isFinal() ? 'final ' : '') . ($method->isAbstract() ? 'abstract ' : '')
            . 'function ' . $method->getName() . '(' . implode(', ', $params) . ')' . $return;
    }

    private static function type(?\ReflectionType $type, \ReflectionClass $class): string
    {
        if ($type === null) {
            return '<no type>';
        }
        $text = (string) $type;
        $nullable = str_starts_with($text, '?');

        // self and static name the class they are written in: compare the class itself.
        $name = ltrim($text, '?\\');
        if ($name === 'self' || $name === 'static') {
            $name = $class->getName();
        }

        return ($nullable ? '?' : '') . $name;
    }

    private static function value(\ReflectionParameter $param): string
    {
        if ($param->isDefaultValueConstant()) {
            return ltrim((string) $param->getDefaultValueConstantName(), '\\');
        }
        $value = $param->getDefaultValue();
        if ($value instanceof \UnitEnum) {
            return $value::class . '::' . $value->name;
        }

        return var_export($value, true);
    }
}
