<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\TestCase;
use Pier\Exception\RpcException;
use Pier\Tcp\Connections;

/**
 * Pier\Tcp\Connections against a scripted goridge RPC server: the requests each method sends (the stock
 * client's framing, ../shared/rpc-vectors.json), the answers it accepts, and its errors — the same in
 * both implementations.
 */
final class ConnectionsTest extends TestCase
{
    private const UUID = '6ba7b810-9dad-41d1-80b4-00c04fd430c8';

    /** @var array<string, string> name => bytes of ../shared/rpc-vectors.json */
    private static array $vectors = [];

    private static function vector(string $name): string
    {
        if (self::$vectors === []) {
            $data = json_decode((string) file_get_contents(\dirname(__DIR__, 4) . '/shared/rpc-vectors.json'), true, 8, JSON_THROW_ON_ERROR);
            self::$vectors = array_map(static fn (array $f): string => (string) hex2bin($f['hex']), $data['frames']);
        }

        return self::$vectors[$name];
    }

    public function testEachMethodSendsItsArgumentAndReturnsTheResult(): void
    {
        $server = new FakeRpcServer([
            ['result', 'true'], ['result', '3'], ['result', 'false'], ['result', 'true'], ['result', 'true'],
            ['result', '{"total":1,"connections":[{"uuid":"u","server":"chat","remote_addr":"127.0.0.1:5","connected_at":1764430000.25,"bytes_in":3,"bytes_out":0,"groups":["g"]}]}'],
            ['result', '{"uuid":"u","groups":[],"7":"seven"}'], ['result', 'null'], ['result', '7'], ['result', '[{"group":"g","members":2}]'], ['result', '0'],
        ]);
        $c = new Connections($server->address);

        self::assertTrue($c->send('u', "hi\n/é"));
        self::assertSame(3, $c->broadcast("\xff\x00", 'g', 'chat', ['x' => 'a', 'b']));
        self::assertFalse($c->join('g', 'u'));
        self::assertTrue($c->leave('g', 'u'));
        self::assertTrue($c->close('u'));
        self::assertSame(
            ['total' => 1, 'connections' => [['uuid' => 'u', 'server' => 'chat', 'remote_addr' => '127.0.0.1:5', 'connected_at' => 1764430000.25, 'bytes_in' => 3, 'bytes_out' => 0, 'groups' => ['g']]]],
            $c->list('chat', null, 10, 5),
        );
        self::assertSame(['uuid' => 'u', 'groups' => [], 7 => 'seven'], $c->info('u'));
        self::assertNull($c->info('gone'));
        self::assertSame(7, $c->count(group: 'g'));
        self::assertSame([['group' => 'g', 'members' => 2]], $c->groups());
        self::assertSame(0, $c->broadcast('x'));
        unset($c);

        $requests = $server->requests();
        self::assertSame([
            ['pier.Send', '{"uuid":"u","data":"hi\n/é"}'],
            ['pier.Broadcast', '{"data_b64":"/wA=","group":"g","server":"chat","except":["a","b"]}'],
            ['pier.Join', '{"uuid":"u","group":"g"}'],
            ['pier.Leave', '{"uuid":"u","group":"g"}'],
            ['pier.Close', '{"uuid":"u"}'],
            ['pier.List', '{"server":"chat","offset":10,"limit":5}'],
            ['pier.Info', '{"uuid":"u"}'],
            ['pier.Info', '{"uuid":"gone"}'],
            ['pier.Count', '{"group":"g"}'],
            ['pier.Groups', '{}'],
            ['pier.Broadcast', '{"data":"x"}'],
        ], array_map(static fn (array $r): array => [$r['method'], $r['argument']], $requests));
        foreach ($requests as $i => $r) {
            self::assertSame(0x08, $r['flags'], 'CODEC_JSON');
            self::assertSame([$requests[0]['seq'] + $i, \strlen($r['method'])], $r['options'], 'options [seq, len(method)], seq +1 per call');
        }
    }

    public function testErrorsAreRpcExceptionsWithTheSameMessages(): void
    {
        $server = new FakeRpcServer([['error', 'no such connection group'], ['result', '"nope"'], ['result', '5'], ['result', '{"total":"x"}'], ['close'], ['result', 'true']]);
        $c = new Connections($server->address);
        $messages = [];
        foreach ([
            static fn () => $c->join('g', 'u'),
            static fn () => $c->count(),
            static fn () => $c->info('u'),
            static fn () => $c->list(),
            static fn () => $c->send("\xff", 'x'),
            static fn () => $c->broadcast('x', except: [42]),
            static fn () => $c->close('u'),
        ] as $call) {
            try {
                $call();
                $messages[] = 'no exception';
            } catch (RpcException $e) {
                $messages[] = $e->getMessage();
            }
        }
        self::assertTrue($c->close('u'), 'the next call reconnects');
        unset($c, $call);

        self::assertSame([
            'no such connection group',
            'could not call pier.Count: the server answered "nope", expected an integer',
            'could not call pier.Info: the server answered 5, expected a connection or null',
            'could not call pier.List: the server answered {"total":"x"}, expected a page {"total", "connections"}',
            'could not call pier.Send: a string in its argument is not UTF-8',
            'could not call pier.Broadcast: $except must hold uuid strings only',
            "could not call pier.Close on {$server->address}: the server closed the connection before answering",
        ], $messages);
        self::assertCount(6, $server->requests(), 'nothing is sent for a refused argument');
    }

    public function testAddressesAndTheEnvironment(): void
    {
        foreach (['', '127.0.0.1:6001', 'tcp://127.0.0.1', 'http://x:1', 'unix://'] as $bad) {
            try {
                new Connections($bad);
                self::fail("{$bad} accepted");
            } catch (RpcException $e) {
                self::assertSame('could not use the RPC address ' . json_encode($bad, JSON_UNESCAPED_SLASHES) . ': expected tcp://host:port or unix:///path', $e->getMessage());
            }
        }

        $previous = getenv('RR_RPC');
        putenv('RR_RPC');
        try {
            Connections::fromEnvironment();
            self::fail('no exception without RR_RPC');
        } catch (RpcException $e) {
            self::assertSame('could not find the RPC address: RR_RPC is not set (configure rpc.listen, or use new Connections($address))', $e->getMessage());
        }

        $socket = sys_get_temp_dir() . '/pier-rpc-' . getmypid() . '.sock';
        @unlink($socket);
        $server = new FakeRpcServer([['result', '5']], "unix://{$socket}");
        putenv("RR_RPC=unix://{$socket}");
        try {
            self::assertSame(5, Connections::fromEnvironment()->count('chat'));
        } finally {
            putenv($previous === false ? 'RR_RPC' : "RR_RPC={$previous}");
        }
        self::assertSame('{"server":"chat"}', $server->requests()[0]['argument']);
        @unlink($socket);

        try {
            (new Connections($server->address))->count();
            self::fail('connected to a server that is gone');
        } catch (RpcException $e) {
            self::assertStringStartsWith("could not call pier.Count: could not connect to unix://{$socket}", $e->getMessage());
        }
    }

    public function testAFreshProcessFramesAsTheStockClientAndAcceptsTheSharedAnswers(): void
    {
        $server = new FakeRpcServer(array_map(static fn (string $name): array => ['raw', bin2hex(self::vector($name))], [
            'rpc_response_tcp_close_json',
            'rpc_response_tcp_close_msgpack',
            'rpc_response_resetter_reset_json',
            'rpc_response_resetter_reset_unknown_json',
            'rpc_response_informer_workers_json',
            'rpc_response_informer_list_json',
            'rpc_response_rpc_version_json',
        ]));
        $calls = [['close', self::UUID], ['close', self::UUID], ['join', 'g', self::UUID], ['close', self::UUID], ['info', self::UUID], ['groups'], ['count']];
        $process = proc_open(
            [PHP_BINARY, \dirname(__DIR__) . '/fixtures/rpc-client.php', $server->address],
            [0 => ['pipe', 'rb'], 1 => ['pipe', 'wb'], 2 => ['pipe', 'wb']],
            $pipes,
            null,
            array_merge(getenv(), ['PIER_TEST_CALLS' => json_encode($calls, JSON_THROW_ON_ERROR)]),
        );
        self::assertIsResource($process);
        $out = (string) stream_get_contents($pipes[1]);
        $err = (string) stream_get_contents($pipes[2]);
        fclose($pipes[0]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        self::assertSame(0, proc_close($process), $err);
        $lines = array_map(static fn (string $l): array => json_decode($l, true, 16, JSON_THROW_ON_ERROR), array_values(array_filter(explode("\n", $out))));

        self::assertSame(['implementation' => Implementation::expected()], $lines[0]);
        $rpc = 'Pier\Exception\RpcException';
        self::assertSame([
            ['result' => true],
            ['exception' => $rpc, 'message' => 'could not call pier.Close: the answer is not JSON (flags 0x10)'],
            ['result' => true],
            ['exception' => $rpc, 'message' => 'no such plugin: http'],
            ['result' => ['workers' => [['pid' => 4242, 'status' => 2, 'numExecs' => 17, 'created' => 1764430000000000000, 'memoryUsage' => 20971520, 'CPUPercent' => 0.5, 'command' => 'php worker.php', 'statusStr' => 'ready']]]],
            ['result' => ['tcp']],
            ['exception' => $rpc, 'message' => 'could not call pier.Count: the server answered "2025.1.15", expected an integer'],
        ], \array_slice($lines, 1));

        // The stock client's framing (rpc_request_tcp_close_json): flags CODEC_JSON, options [1, len], name ‖ JSON.
        $requests = $server->requests();
        $first = 'pier.Close{"uuid":"' . self::UUID . '"}';
        $head = pack('CCV', 0x15, 0x08, \strlen($first));
        self::assertSame(bin2hex($head . pack('V', crc32($head)) . "\0\0" . pack('VV', 1, 10) . $first), $requests[0]['hex']);
        self::assertSame(substr(self::vector('rpc_request_tcp_close_json'), 0, 2), hex2bin(substr($requests[0]['hex'], 0, 4)), 'same version/header length and flags as the stock client');
        self::assertSame([1, 2, 3, 4, 5, 6, 7], array_column($requests, 'seq'), 'sequence numbers from 1 per process');
    }
}
