<?php

declare(strict_types=1);

namespace Pier\Tcp;

use Pier\Exception\RpcException;
use Pier\Internal\RpcClient;

/**
 * Every live connection of a Pier server, reachable from any PHP process (a cron job, a web request, a
 * queue consumer) over the server's RPC listener (`rpc.listen`; goridge RPC with the JSON codec, the
 * `pier.*` methods). Workers get the address in RR_RPC.
 *
 * ```php
 * $connections = Connections::fromEnvironment();
 * $connections->broadcast("server going down in 5 minutes\r\n", group: 'lobby');
 * ```
 *
 * Calls block until the server answers (at most 30 s); one socket is opened on the first call and kept.
 */
final class Connections
{
    /** Where the server's RPC listener is, and the connection to it. */
    private readonly RpcClient $rpc;

    /**
     * @param string $address "tcp://host:port" or "unix:///path", as `rpc.listen` says
     *
     * @throws RpcException when the address is neither
     */
    public function __construct(string $address)
    {
        $this->rpc = RpcClient::to($address);
    }

    /**
     * The server whose address RR_RPC holds (Pier and RoadRunner set it for their workers).
     *
     * @throws RpcException when RR_RPC is not set or not an address
     */
    public static function fromEnvironment(): Connections
    {
        $address = getenv('RR_RPC');
        if (!\is_string($address) || $address === '') {
            throw new RpcException('could not find the RPC address: RR_RPC is not set (configure rpc.listen, or use new Connections($address))');
        }

        return new self($address);
    }

    /**
     * Queues $data on connection $uuid (pier.Send). False when no such connection is open.
     *
     * @throws RpcException
     */
    public function send(string $uuid, string $data): bool
    {
        return self::bool('pier.Send', $this->rpc->call('pier.Send', ['uuid' => $uuid] + self::data($data)));
    }

    /**
     * Queues $data on the members of $group (of server $server only, if given), or with no group on every
     * connection of $server, or with neither on every connection; minus $except (pier.Broadcast).
     *
     * @param array<array-key, mixed> $except uuids to leave out
     *
     * @return int how many connections it was queued on
     *
     * @throws RpcException
     */
    public function broadcast(string $data, ?string $group = null, ?string $server = null, array $except = []): int
    {
        $argument = self::data($data);
        if ($group !== null) {
            $argument['group'] = $group;
        }
        if ($server !== null) {
            $argument['server'] = $server;
        }
        if ($except !== []) {
            $argument['except'] = array_map(static fn (mixed $uuid): string => \is_string($uuid)
                ? $uuid
                : throw new RpcException('could not call pier.Broadcast: $except must hold uuid strings only'), array_values($except));
        }

        return self::int('pier.Broadcast', $this->rpc->call('pier.Broadcast', $argument));
    }

    /**
     * Adds connection $uuid to $group (pier.Join). False when no such connection is open.
     *
     * @throws RpcException
     */
    public function join(string $group, string $uuid): bool
    {
        return self::bool('pier.Join', $this->rpc->call('pier.Join', ['uuid' => $uuid, 'group' => $group]));
    }

    /**
     * Removes connection $uuid from $group (pier.Leave). False when no such connection is open.
     *
     * @throws RpcException
     */
    public function leave(string $group, string $uuid): bool
    {
        return self::bool('pier.Leave', $this->rpc->call('pier.Leave', ['uuid' => $uuid, 'group' => $group]));
    }

    /**
     * Closes connection $uuid after what it has queued is written; it gets its CLOSE event (pier.Close).
     * False when no such connection was open.
     *
     * @throws RpcException
     */
    public function close(string $uuid): bool
    {
        return self::bool('pier.Close', $this->rpc->call('pier.Close', ['uuid' => $uuid]));
    }

    /**
     * One page of the open connections, oldest first, optionally of one server and/or one group
     * (pier.List): ['total' => int, 'connections' => list of {@see info()} arrays]. $limit is at most 1000.
     *
     * @return array{total: int, connections: list<array<string, mixed>>}
     *
     * @throws RpcException
     */
    public function list(?string $server = null, ?string $group = null, int $offset = 0, int $limit = 100): array
    {
        $argument = self::filter($server, $group) + ['offset' => $offset, 'limit' => $limit];
        $page = $this->rpc->call('pier.List', $argument);
        if (!\is_array($page) || !\is_int($page['total'] ?? null) || !\is_array($page['connections'] ?? null)) {
            throw self::unexpected('pier.List', 'a page {"total", "connections"}', $page);
        }
        /** @var array{total: int, connections: list<array<string, mixed>>} $page */

        return $page;
    }

    /**
     * Connection $uuid: ['uuid', 'server', 'remote_addr', 'connected_at' (Unix seconds, float),
     * 'bytes_in', 'bytes_out', 'groups' => list], or null when no such connection is open (pier.Info).
     *
     * @return array<string, mixed>|null
     *
     * @throws RpcException
     */
    public function info(string $uuid): ?array
    {
        $info = $this->rpc->call('pier.Info', ['uuid' => $uuid]);
        if ($info !== null && !\is_array($info)) {
            throw self::unexpected('pier.Info', 'a connection or null', $info);
        }

        return $info;
    }

    /**
     * How many connections are open, optionally of one server and/or one group (pier.Count).
     *
     * @throws RpcException
     */
    public function count(?string $server = null, ?string $group = null): int
    {
        return self::int('pier.Count', $this->rpc->call('pier.Count', (object) self::filter($server, $group)));
    }

    /**
     * The groups with members, sorted by name, optionally counting one server's connections only
     * (pier.Groups): a list of ['group' => string, 'members' => int].
     *
     * @return list<array{group: string, members: int}>
     *
     * @throws RpcException
     */
    public function groups(?string $server = null): array
    {
        $groups = $this->rpc->call('pier.Groups', (object) self::filter($server, null));
        if (!\is_array($groups) || !array_is_list($groups)) {
            throw self::unexpected('pier.Groups', 'a list of groups', $groups);
        }
        /** @var list<array{group: string, members: int}> $groups */

        return $groups;
    }

    /**
     * The bytes as "data" when they are UTF-8 (JSON strings are), else as "data_b64" (standard base64).
     *
     * @return array{data: string}|array{data_b64: string}
     */
    private static function data(string $data): array
    {
        return preg_match('//u', $data) === 1 ? ['data' => $data] : ['data_b64' => base64_encode($data)];
    }

    /**
     * @return array<string, string>
     */
    private static function filter(?string $server, ?string $group): array
    {
        return array_filter(['server' => $server, 'group' => $group], static fn (?string $v): bool => $v !== null);
    }

    /**
     * @throws RpcException
     */
    private static function bool(string $method, mixed $result): bool
    {
        return \is_bool($result) ? $result : throw self::unexpected($method, 'a boolean', $result);
    }

    /**
     * @throws RpcException
     */
    private static function int(string $method, mixed $result): int
    {
        return \is_int($result) ? $result : throw self::unexpected($method, 'an integer', $result);
    }

    private static function unexpected(string $method, string $expected, mixed $result): RpcException
    {
        return new RpcException(sprintf('could not call %s: the server answered %s, expected %s', $method, json_encode($result, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE), $expected));
    }
}
