<?php

declare(strict_types=1);

/*
 * The MQTT 3.1.1 broker of examples/mqtt, in plain classes the worker loop drives (worker.php) and
 * the unit tests call directly (tests/BrokerTest.php):
 *
 * - Packet: encoding of the packets the broker sends; Reader: decoding of what clients send.
 * - Topic: topic name and filter rules, and matching with + and #.
 * - Store: what all workers share (SQLite through PDO): sessions, subscriptions, retained messages.
 * - Session: this connection's MQTT session, kept in Pier's connection state between events.
 * - Broker: one event in, one Outcome out (the reply, the pushes to other connections, the new state).
 *
 * Workers keep nothing in memory between events: a connection's session travels in its connection
 * state, and what other connections must see lives in the store.
 */

namespace PierExample\Mqtt;

/** A packet that breaks MQTT 3.1.1: the connection is closed (spec: "Malformed Packet", 4.8). */
final class MalformedPacket extends \RuntimeException
{
}

/** Packet types (MQTT 3.1.1, 2.2.1) and the encodings the broker sends. */
final class Packet
{
    public const CONNECT = 1;
    public const CONNACK = 2;
    public const PUBLISH = 3;
    public const PUBACK = 4;
    public const PUBREC = 5;
    public const PUBREL = 6;
    public const PUBCOMP = 7;
    public const SUBSCRIBE = 8;
    public const SUBACK = 9;
    public const UNSUBSCRIBE = 10;
    public const UNSUBACK = 11;
    public const PINGREQ = 12;
    public const PINGRESP = 13;
    public const DISCONNECT = 14;

    /** The remaining length as MQTT writes it: 7 bits per byte, least significant first. */
    public static function varint(int $n): string
    {
        $out = '';
        do {
            $byte = $n % 128;
            $n = intdiv($n, 128);
            $out .= \chr($n > 0 ? $byte | 0x80 : $byte);
        } while ($n > 0);

        return $out;
    }

    public static function frame(int $type, int $flags, string $body): string
    {
        return \chr(($type << 4) | $flags) . self::varint(\strlen($body)) . $body;
    }

    public static function str(string $s): string
    {
        return pack('n', \strlen($s)) . $s;
    }

    public static function connack(bool $sessionPresent, int $code): string
    {
        return self::frame(self::CONNACK, 0, \chr($sessionPresent ? 1 : 0) . \chr($code));
    }

    /** PUBACK, PUBREC, PUBREL (flags 0b0010), PUBCOMP, UNSUBACK: a packet identifier only. */
    public static function ack(int $type, int $packetId): string
    {
        return self::frame($type, $type === self::PUBREL ? 2 : 0, pack('n', $packetId));
    }

    /** @param list<int> $codes granted QoS per filter, or 0x80 for a refused one */
    public static function suback(int $packetId, array $codes): string
    {
        return self::frame(self::SUBACK, 0, pack('n', $packetId) . implode('', array_map('chr', $codes)));
    }

    public static function publish(string $topic, string $payload, int $qos, bool $retain, int $packetId = 0): string
    {
        $flags = ($qos << 1) | ($retain ? 1 : 0);
        $id = $qos > 0 ? pack('n', $packetId) : '';

        return self::frame(self::PUBLISH, $flags, self::str($topic) . $id . $payload);
    }

    public static function pingresp(): string
    {
        return self::frame(self::PINGRESP, 0, '');
    }
}

/** Reads the fields of one whole packet (Pier's varint framing hands over exactly one). */
final class Reader
{
    public readonly int $type;
    public readonly int $flags;
    private int $at;

    public function __construct(private readonly string $bytes)
    {
        if (\strlen($bytes) < 2) {
            throw new MalformedPacket('packet shorter than its fixed header');
        }
        $this->type = \ord($bytes[0]) >> 4;
        $this->flags = \ord($bytes[0]) & 0x0f;
        // The remaining length (checked by Pier's framing; checked again so the class stands alone).
        $length = 0;
        $this->at = 1;
        for ($shift = 0; ; $shift += 7) {
            if ($this->at >= \strlen($bytes) || $shift > 21) {
                throw new MalformedPacket('bad remaining length');
            }
            $byte = \ord($bytes[$this->at++]);
            $length += ($byte & 0x7f) << $shift;
            if ($byte < 0x80) {
                break;
            }
        }
        if ($length !== \strlen($bytes) - $this->at) {
            throw new MalformedPacket('remaining length does not match the packet');
        }
    }

    public function byte(): int
    {
        if ($this->at >= \strlen($this->bytes)) {
            throw new MalformedPacket('packet ends early');
        }

        return \ord($this->bytes[$this->at++]);
    }

    public function u16(): int
    {
        return ($this->byte() << 8) | $this->byte();
    }

    public function binary(): string
    {
        $length = $this->u16();
        if ($this->at + $length > \strlen($this->bytes)) {
            throw new MalformedPacket('string runs past the packet');
        }
        $s = substr($this->bytes, $this->at, $length);
        $this->at += $length;

        return $s;
    }

    /** A UTF-8 string (1.5.3): well-formed, without U+0000. */
    public function utf8(): string
    {
        $s = $this->binary();
        if (!mb_check_encoding($s, 'UTF-8') || str_contains($s, "\0")) {
            throw new MalformedPacket('string is not valid UTF-8');
        }

        return $s;
    }

    public function rest(): string
    {
        $s = substr($this->bytes, $this->at);
        $this->at = \strlen($this->bytes);

        return $s;
    }

    public function atEnd(): bool
    {
        return $this->at >= \strlen($this->bytes);
    }

    public function end(): void
    {
        if (!$this->atEnd()) {
            throw new MalformedPacket('bytes after the last field');
        }
    }
}

/** Topic names and filters (4.7). */
final class Topic
{
    /** A topic name a client may publish to: not empty, no wildcards. */
    public static function validName(string $topic): bool
    {
        return $topic !== '' && strpbrk($topic, '+#') === false;
    }

    /** A filter: `#` only last and alone in its level, `+` alone in its level. */
    public static function validFilter(string $filter): bool
    {
        if ($filter === '') {
            return false;
        }
        $levels = explode('/', $filter);
        $last = \count($levels) - 1;
        foreach ($levels as $i => $level) {
            if (str_contains($level, '#') && ($level !== '#' || $i !== $last)) {
                return false;
            }
            if (str_contains($level, '+') && $level !== '+') {
                return false;
            }
        }

        return true;
    }

    /** Whether $filter (valid) matches the topic name $topic. */
    public static function matches(string $filter, string $topic): bool
    {
        if ($filter === $topic) {
            return true;
        }
        $f = explode('/', $filter);
        $t = explode('/', $topic);
        // Wildcards at the first level do not match topics starting with $ (4.7.2: $SYS/...).
        if ($topic[0] === '$' && ($f[0] === '+' || $f[0] === '#')) {
            return false;
        }
        foreach ($f as $i => $level) {
            if ($level === '#') {
                return true; // also matches the parent level itself: "a/#" matches "a"
            }
            if (!\array_key_exists($i, $t)) {
                return false;
            }
            if ($level !== '+' && $level !== $t[$i]) {
                return false;
            }
        }

        return \count($f) === \count($t);
    }

    /** The Pier group of a filter's subscribers (bounded length whatever the filter's). */
    public static function group(string $filter): string
    {
        return 'mqtt:' . sha1($filter);
    }
}

/**
 * What every worker shares, in one SQLite file (WAL mode: readers never wait for the writer; a
 * busy timeout instead of errors when two workers write at once).
 *
 * - sessions: client id → the connection (Pier uuid) that holds it now (NULL while a persistent
 *   session is offline), clean-session flag, next packet identifier for QoS 1 deliveries.
 * - subscriptions: client id, filter, granted QoS.
 * - retained: the last retained message per topic.
 */
final class Store
{
    private readonly \PDO $db;

    public function __construct(string $path)
    {
        $dir = \dirname($path);
        if ($path !== ':memory:' && !is_dir($dir) && !@mkdir($dir, 0o777, true) && !is_dir($dir)) {
            throw new \RuntimeException("could not create the store's directory {$dir}");
        }
        $this->db = new \PDO('sqlite:' . $path, null, null, [
            \PDO::ATTR_ERRMODE => \PDO::ERRMODE_EXCEPTION,
            \PDO::ATTR_DEFAULT_FETCH_MODE => \PDO::FETCH_ASSOC,
        ]);
        $this->db->exec('PRAGMA busy_timeout = 10000');
        // Several workers open the file at once: creating it is guarded by the same lock.
        $this->db->exec('PRAGMA journal_mode = WAL');
        $this->db->exec('PRAGMA synchronous = NORMAL');
        $this->db->exec(<<<'SQL'
            CREATE TABLE IF NOT EXISTS sessions (
                client_id TEXT PRIMARY KEY,
                uuid TEXT UNIQUE,
                clean INTEGER NOT NULL,
                next_id INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS subscriptions (
                client_id TEXT NOT NULL,
                filter TEXT NOT NULL,
                qos INTEGER NOT NULL,
                PRIMARY KEY (client_id, filter)
            );
            CREATE TABLE IF NOT EXISTS retained (
                topic TEXT PRIMARY KEY,
                payload BLOB NOT NULL,
                qos INTEGER NOT NULL
            );
            SQL);
    }

    /** @template T @param callable(): T $work @return T */
    public function transaction(callable $work): mixed
    {
        // IMMEDIATE: take the write lock first, so two workers never deadlock upgrading a read.
        $this->db->exec('BEGIN IMMEDIATE');
        try {
            $result = $work();
            $this->db->exec('COMMIT');

            return $result;
        } catch (\Throwable $e) {
            $this->db->exec('ROLLBACK');
            throw $e;
        }
    }

    /** @return array{uuid: ?string, clean: int}|null */
    public function session(string $clientId): ?array
    {
        $q = $this->db->prepare('SELECT uuid, clean FROM sessions WHERE client_id = ?');
        $q->execute([$clientId]);
        $row = $q->fetch();

        return $row === false ? null : ['uuid' => $row['uuid'], 'clean' => (int) $row['clean']];
    }

    /** Binds $clientId to the connection $uuid (a new session, or an old one taken over). */
    public function attach(string $clientId, string $uuid, bool $clean): void
    {
        // A stale row for this uuid cannot exist (uuids are unique per connection); the client id's
        // row is replaced or updated.
        $this->db->prepare(<<<'SQL'
            INSERT INTO sessions (client_id, uuid, clean) VALUES (?, ?, ?)
            ON CONFLICT (client_id) DO UPDATE SET uuid = excluded.uuid, clean = excluded.clean
            SQL)->execute([$clientId, $uuid, $clean ? 1 : 0]);
    }

    /** Ends the session at its connection's end; false when another connection holds it by now. */
    public function detach(string $clientId, string $uuid): bool
    {
        $q = $this->db->prepare('SELECT clean FROM sessions WHERE client_id = ? AND uuid = ?');
        $q->execute([$clientId, $uuid]);
        $row = $q->fetch();
        if ($row === false) {
            return false;
        }
        if ((int) $row['clean'] === 1) {
            $this->forget($clientId);
        } else {
            $this->db->prepare('UPDATE sessions SET uuid = NULL WHERE client_id = ?')
                ->execute([$clientId]);
        }

        return true;
    }

    /** Drops a session and its subscriptions. */
    public function forget(string $clientId): void
    {
        $this->db->prepare('DELETE FROM subscriptions WHERE client_id = ?')->execute([$clientId]);
        $this->db->prepare('DELETE FROM sessions WHERE client_id = ?')->execute([$clientId]);
    }

    /** The next packet identifier (1–65535) for deliveries to $clientId. */
    public function nextPacketId(string $clientId): int
    {
        $q = $this->db->prepare('UPDATE sessions SET next_id = next_id % 65535 + 1 WHERE client_id = ? RETURNING next_id');
        $q->execute([$clientId]);
        $id = $q->fetchColumn();

        return $id === false ? 1 : (int) $id;
    }

    public function subscribe(string $clientId, string $filter, int $qos): void
    {
        $this->db->prepare('INSERT INTO subscriptions (client_id, filter, qos) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET qos = excluded.qos')
            ->execute([$clientId, $filter, $qos]);
    }

    public function unsubscribe(string $clientId, string $filter): void
    {
        $this->db->prepare('DELETE FROM subscriptions WHERE client_id = ? AND filter = ?')->execute([$clientId, $filter]);
    }

    public function subscriptionCount(string $clientId): int
    {
        $q = $this->db->prepare('SELECT count(*) FROM subscriptions WHERE client_id = ?');
        $q->execute([$clientId]);

        return (int) $q->fetchColumn();
    }

    /** @return list<string> the filters of $clientId */
    public function filters(string $clientId): array
    {
        $q = $this->db->prepare('SELECT filter FROM subscriptions WHERE client_id = ? ORDER BY filter');
        $q->execute([$clientId]);

        return array_map(static fn (array $r): string => $r['filter'], $q->fetchAll());
    }

    /** @return list<string> the filters with an online subscriber that match $topic */
    public function matchingFilters(string $topic): array
    {
        $q = $this->db->prepare(<<<'SQL'
            SELECT DISTINCT s.filter FROM subscriptions s
            JOIN sessions se ON se.client_id = s.client_id
            WHERE se.uuid IS NOT NULL AND (s.filter = ? OR instr(s.filter, '+') > 0 OR instr(s.filter, '#') > 0)
            SQL);
        $q->execute([$topic]);

        return array_values(array_filter(
            $q->fetchAll(\PDO::FETCH_COLUMN),
            static fn (string $filter): bool => Topic::matches($filter, $topic),
        ));
    }

    /**
     * Online subscriptions whose filter matches $topic.
     *
     * @return list<array{filter: string, qos: int, uuid: string, client_id: string}>
     */
    public function matching(string $topic): array
    {
        // Exact filters through the primary key's column; wildcard filters are matched here.
        $q = $this->db->prepare(<<<'SQL'
            SELECT s.filter, s.qos, se.uuid, se.client_id FROM subscriptions s
            JOIN sessions se ON se.client_id = s.client_id
            WHERE se.uuid IS NOT NULL AND (s.filter = ? OR instr(s.filter, '+') > 0 OR instr(s.filter, '#') > 0)
            ORDER BY s.filter, se.uuid
            SQL);
        $q->execute([$topic]);
        $out = [];
        foreach ($q->fetchAll() as $row) {
            if (Topic::matches($row['filter'], $topic)) {
                $row['qos'] = (int) $row['qos'];
                $out[] = $row;
            }
        }

        return $out;
    }

    public function retain(string $topic, string $payload, int $qos): void
    {
        if ($payload === '') {
            // 3.3.1.3: a retained message with an empty payload removes the retained message.
            $this->db->prepare('DELETE FROM retained WHERE topic = ?')->execute([$topic]);

            return;
        }
        $q = $this->db->prepare('INSERT INTO retained (topic, payload, qos) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET payload = excluded.payload, qos = excluded.qos');
        $q->bindValue(1, $topic);
        $q->bindValue(2, $payload, \PDO::PARAM_LOB);
        $q->bindValue(3, $qos, \PDO::PARAM_INT);
        $q->execute();
    }

    /** @return list<array{topic: string, payload: string, qos: int}> retained messages matching $filter */
    public function retained(string $filter): array
    {
        $out = [];
        foreach ($this->db->query('SELECT topic, payload, qos FROM retained ORDER BY topic') as $row) {
            if (Topic::matches($filter, $row['topic'])) {
                $out[] = ['topic' => $row['topic'], 'payload' => (string) $row['payload'], 'qos' => (int) $row['qos']];
            }
        }

        return $out;
    }
}

/** This connection's MQTT session, carried in Pier's connection state between events. */
final class Session
{
    /**
     * @param ?array{topic: string, payload: string, qos: int, retain: bool} $will
     * @param list<int> $qos2 packet ids of QoS 2 messages received and not yet released (PUBREL)
     */
    public function __construct(
        public readonly string $clientId,
        public readonly int $keepAlive,
        public readonly ?array $will,
        public readonly array $qos2 = [],
    ) {
    }

    public static function fromState(string $state): ?self
    {
        if ($state === '') {
            return null;
        }
        $s = json_decode($state, true, 8, \JSON_THROW_ON_ERROR);
        $will = $s['w'] === null ? null : [
            'topic' => $s['w']['t'],
            'payload' => base64_decode($s['w']['p'], true) ?: '',
            'qos' => $s['w']['q'],
            'retain' => $s['w']['r'],
        ];

        return new self($s['c'], $s['k'], $will, $s['q']);
    }

    public function toState(): string
    {
        $will = $this->will === null ? null : [
            't' => $this->will['topic'],
            'p' => base64_encode($this->will['payload']),
            'q' => $this->will['qos'],
            'r' => $this->will['retain'],
        ];

        return json_encode(['c' => $this->clientId, 'k' => $this->keepAlive, 'w' => $will, 'q' => $this->qos2], \JSON_THROW_ON_ERROR);
    }

    public function with(?array $will = null, ?array $qos2 = null, bool $dropWill = false): self
    {
        return new self(
            $this->clientId,
            $this->keepAlive,
            $dropWill ? null : ($will ?? $this->will),
            $qos2 ?? $this->qos2,
        );
    }
}

/** What the worker does with one event: pushes (in order), then the reply. */
final class Outcome
{
    /**
     * @var list<array{0: 'send', 1: string, 2: string}|array{0: 'broadcast', 1: string, 2: string, 3: list<string>}|array{0: 'join'|'leave', 1: string}|array{0: 'disconnect', 1: string}>
     */
    public array $pushes = [];
    /** Bytes written to this connection. */
    public string $reply = '';
    /** Close this connection after the reply. */
    public bool $close = false;
    /** The new connection state; null keeps the current one. */
    public ?string $state = null;
    /**
     * The connection's idle timeout in milliseconds, for Pier to enforce (MQTT keep-alive: 1.5 × the
     * CONNECT keep-alive); null leaves it as it is.
     */
    public ?int $idleTimeoutMs = null;
    /** Why the connection is closed (logged by the worker), for protocol violations. */
    public ?string $error = null;

    public static function closing(string $why, string $reply = ''): self
    {
        $o = new self();
        $o->close = true;
        $o->error = $why;
        $o->reply = $reply;

        return $o;
    }
}

/** The broker: MQTT 3.1.1 over Pier events. */
final class Broker
{
    /** Subscriptions per client: each is a Pier group of the connection, which Pier bounds. */
    public const MAX_SUBSCRIPTIONS = 64;
    /** Longest client identifier accepted (3.1.3.1 requires 23; more is allowed). */
    public const MAX_CLIENT_ID = 256;
    /** QoS 2 messages one client may have unreleased at once (each costs state bytes). */
    public const MAX_QOS2_INFLIGHT = 100;

    public function __construct(
        private readonly Store $store,
    ) {
    }

    public function connected(): Outcome
    {
        // MQTT starts with the client's CONNECT; nothing to say yet.
        return new Outcome();
    }

    public function data(string $uuid, string $packet, string $state): Outcome
    {
        try {
            $session = Session::fromState($state);
            $r = new Reader($packet);
            if ($session === null) {
                if ($r->type !== Packet::CONNECT) {
                    return Outcome::closing('the first packet is not CONNECT');
                }

                return $this->connect($uuid, $r);
            }
            $outcome = match ($r->type) {
                Packet::CONNECT => Outcome::closing('a second CONNECT'),
                Packet::PUBLISH => $this->publish($uuid, $r, $session),
                Packet::PUBACK => $this->noReply($r, 0),
                Packet::PUBREL => $this->pubrel($r, $session),
                Packet::SUBSCRIBE => $this->subscribe($r, $session),
                Packet::UNSUBSCRIBE => $this->unsubscribe($r, $session),
                Packet::PINGREQ => $this->ping($r),
                Packet::DISCONNECT => $this->disconnect($r, $session),
                default => Outcome::closing("packet type {$r->type} is not one a client sends"),
            };

            return $outcome;
        } catch (MalformedPacket $e) {
            return Outcome::closing('malformed packet: ' . $e->getMessage());
        } catch (\JsonException $e) {
            return Outcome::closing('unreadable connection state: ' . $e->getMessage());
        }
    }

    /** The connection ended: its will (unless it said DISCONNECT), and its session's end. */
    public function closed(string $uuid, string $state): Outcome
    {
        $outcome = new Outcome();
        try {
            $session = Session::fromState($state);
        } catch (\JsonException) {
            return $outcome;
        }
        if ($session === null) {
            return $outcome;
        }
        $current = $this->store->transaction(fn (): bool => $this->store->detach($session->clientId, $uuid));
        // A connection taken over by a newer one with the same client id publishes no will
        // (3.1.4: the old connection is closed "as if" abnormally, but its session lives on).
        if ($current && $session->will !== null) {
            $w = $session->will;
            $this->deliver($outcome, $w['topic'], $w['payload'], $w['qos'], $w['retain']);
        }

        return $outcome;
    }

    private function connect(string $uuid, Reader $r): Outcome
    {
        if ($r->flags !== 0) {
            throw new MalformedPacket('CONNECT flags are reserved');
        }
        if ($r->utf8() !== 'MQTT') {
            return Outcome::closing('protocol name is not MQTT');
        }
        if ($r->byte() !== 4) {
            // 3.1.2.2: answer 0x01 (unacceptable protocol level), then close.
            return Outcome::closing('protocol level is not 4 (MQTT 3.1.1)', Packet::connack(false, 1));
        }
        $flags = $r->byte();
        if ($flags & 0x01) {
            throw new MalformedPacket('CONNECT reserved flag is set');
        }
        $clean = (bool) ($flags & 0x02);
        $willFlag = (bool) ($flags & 0x04);
        $willQos = ($flags >> 3) & 0x03;
        $willRetain = (bool) ($flags & 0x20);
        $hasPassword = (bool) ($flags & 0x40);
        $hasUser = (bool) ($flags & 0x80);
        if (!$willFlag && ($willQos !== 0 || $willRetain)) {
            throw new MalformedPacket('will QoS or retain without a will');
        }
        if ($willQos === 3) {
            throw new MalformedPacket('will QoS 3');
        }
        if ($hasPassword && !$hasUser) {
            throw new MalformedPacket('password without user name');
        }
        $keepAlive = $r->u16();
        $clientId = $r->utf8();
        $will = null;
        if ($willFlag) {
            $topic = $r->utf8();
            $payload = $r->binary();
            if (!Topic::validName($topic)) {
                throw new MalformedPacket('will topic is not a valid topic name');
            }
            $will = ['topic' => $topic, 'payload' => $payload, 'qos' => $willQos, 'retain' => $willRetain];
        }
        // No authentication in this example: a user name and password are read and not checked.
        if ($hasUser) {
            $r->utf8();
        }
        if ($hasPassword) {
            $r->binary();
        }
        $r->end();
        if ($clientId === '') {
            if (!$clean) {
                // 3.1.3.1: an empty id needs a clean session; 0x02 = identifier rejected.
                return Outcome::closing('empty client id without clean session', Packet::connack(false, 2));
            }
            $clientId = 'pier-' . $uuid;
        }
        if (\strlen($clientId) > self::MAX_CLIENT_ID) {
            return Outcome::closing('client id too long', Packet::connack(false, 2));
        }

        $outcome = new Outcome();
        $present = $this->store->transaction(function () use ($clientId, $uuid, $clean, $outcome): bool {
            $old = $this->store->session($clientId);
            if ($old !== null && $old['uuid'] !== null && $old['uuid'] !== $uuid) {
                // 3.1.4-2: a second connection with this client id takes over; the first is closed.
                $outcome->pushes[] = ['disconnect', $old['uuid']];
            }
            $present = $old !== null && !$clean;
            if ($old !== null && $clean) {
                $this->store->forget($clientId);
            }
            $this->store->attach($clientId, $uuid, $clean);

            return $present;
        });
        if ($present) {
            // The session's subscriptions continue on this connection.
            foreach ($this->store->filters($clientId) as $filter) {
                $outcome->pushes[] = ['join', Topic::group($filter)];
            }
        }
        $outcome->reply = Packet::connack($present, 0);
        $outcome->state = (new Session($clientId, $keepAlive, $will))->toState();
        if ($keepAlive > 0) {
            // 3.1.2.10: a client silent for 1.5 × its keep-alive is disconnected. Pier's idle timeout
            // counts the silence per connection, so nobody else's traffic is needed to notice it.
            // Keep-alive 0 opts out of the mechanism: the server's own idle_timeout (if any) stays.
            $outcome->idleTimeoutMs = 1500 * $keepAlive;
        }

        return $outcome;
    }

    private function publish(string $uuid, Reader $r, Session $session): Outcome
    {
        $qos = ($r->flags >> 1) & 0x03;
        $retain = (bool) ($r->flags & 0x01);
        if ($qos === 3) {
            throw new MalformedPacket('PUBLISH with QoS 3');
        }
        $topic = $r->utf8();
        if (!Topic::validName($topic)) {
            return Outcome::closing('PUBLISH to an invalid topic name');
        }
        $packetId = $qos > 0 ? $r->u16() : 0;
        if ($qos > 0 && $packetId === 0) {
            throw new MalformedPacket('packet identifier 0');
        }
        $payload = $r->rest();
        $outcome = new Outcome();
        if ($qos === 2) {
            // Exactly once inbound (4.3.3, method B): deliver on the first PUBLISH, remember the id
            // until PUBREL, so a duplicate of it is acknowledged but not delivered again.
            if (!\in_array($packetId, $session->qos2, true)) {
                if (\count($session->qos2) >= self::MAX_QOS2_INFLIGHT) {
                    return Outcome::closing('too many unreleased QoS 2 messages');
                }
                $this->deliver($outcome, $topic, $payload, 2, $retain);
                $outcome->state = $session->with(qos2: [...$session->qos2, $packetId])->toState();
            }
            $outcome->reply = Packet::ack(Packet::PUBREC, $packetId);

            return $outcome;
        }
        $this->deliver($outcome, $topic, $payload, $qos, $retain);
        if ($qos === 1) {
            $outcome->reply = Packet::ack(Packet::PUBACK, $packetId);
        }

        return $outcome;
    }

    /**
     * Stores a retained message and sends the message to every online subscriber, at the lower of
     * the message's QoS and the subscription's (QoS 2 is delivered as QoS 1: this broker does not
     * send QoS 2). A subscriber with several matching filters gets one copy, at the highest QoS.
     */
    private function deliver(Outcome $outcome, string $topic, string $payload, int $qos, bool $retain): void
    {
        $qos = min($qos, 1);
        if ($retain) {
            $this->store->retain($topic, $payload, $qos);
        }
        if ($qos === 0) {
            // Everyone gets the same QoS 0 bytes: with one matching filter, its group is exactly the
            // recipients, and one broadcast needs no per-subscriber rows (the usual case, and the
            // one the bench measures).
            $filters = $this->store->matchingFilters($topic);
            if (\count($filters) <= 1) {
                foreach ($filters as $filter) {
                    $outcome->pushes[] = ['broadcast', Packet::publish($topic, $payload, 0, false), Topic::group($filter), []];
                }

                return;
            }
        }
        $matches = $this->store->matching($topic);
        $granted = [];  // uuid → QoS of its copy
        $clients = [];  // uuid → client id
        $members = [];  // filter → uuids
        foreach ($matches as $m) {
            $granted[$m['uuid']] = max($granted[$m['uuid']] ?? 0, min($qos, $m['qos']));
            $clients[$m['uuid']] = $m['client_id'];
            $members[$m['filter']][] = $m['uuid'];
        }
        // QoS 0 copies are the same bytes for everyone: one broadcast per matching filter's group,
        // except connections served already or getting a QoS 1 copy.
        $qos0 = Packet::publish($topic, $payload, 0, false);
        $served = [];
        foreach ($members as $filter => $uuids) {
            $except = [];
            $any = false;
            foreach ($uuids as $u) {
                if (isset($served[$u]) || $granted[$u] === 1) {
                    $except[] = $u;
                } else {
                    $served[$u] = true;
                    $any = true;
                }
            }
            if ($any) {
                $outcome->pushes[] = ['broadcast', $qos0, Topic::group($filter), $except];
            }
        }
        // QoS 1 copies carry each subscriber's own packet identifier.
        foreach ($granted as $u => $q) {
            if ($q === 1) {
                $id = $this->store->nextPacketId($clients[$u]);
                $outcome->pushes[] = ['send', (string) $u, Packet::publish($topic, $payload, 1, false, $id)];
            }
        }
    }

    private function pubrel(Reader $r, Session $session): Outcome
    {
        if ($r->flags !== 2) {
            throw new MalformedPacket('PUBREL flags must be 0010');
        }
        $id = $r->u16();
        $r->end();
        $outcome = new Outcome();
        $outcome->reply = Packet::ack(Packet::PUBCOMP, $id);
        $outcome->state = $session->with(qos2: array_values(array_diff($session->qos2, [$id])))->toState();

        return $outcome;
    }

    private function subscribe(Reader $r, Session $session): Outcome
    {
        if ($r->flags !== 2) {
            throw new MalformedPacket('SUBSCRIBE flags must be 0010');
        }
        $packetId = $r->u16();
        $requests = [];
        while (!$r->atEnd()) {
            $filter = $r->utf8();
            $qos = $r->byte();
            if ($qos > 2) {
                throw new MalformedPacket('requested QoS above 2 or reserved bits set');
            }
            $requests[] = [$filter, $qos];
        }
        if ($requests === []) {
            throw new MalformedPacket('SUBSCRIBE without a topic filter');
        }
        $outcome = new Outcome();
        $codes = [];
        $retained = '';
        foreach ($requests as [$filter, $qos]) {
            $granted = min($qos, 1);
            $ok = Topic::validFilter($filter) && $this->store->transaction(function () use ($session, $filter, $granted): bool {
                $known = \in_array($filter, $this->store->filters($session->clientId), true);
                if (!$known && $this->store->subscriptionCount($session->clientId) >= self::MAX_SUBSCRIPTIONS) {
                    return false;
                }
                $this->store->subscribe($session->clientId, $filter, $granted);

                return true;
            });
            if (!$ok) {
                $codes[] = 0x80;
                continue;
            }
            $codes[] = $granted;
            $outcome->pushes[] = ['join', Topic::group($filter)];
            // 3.3.1.3: retained messages matching a new subscription are sent with RETAIN set.
            foreach ($this->store->retained($filter) as $m) {
                $q = min($granted, $m['qos']);
                $id = $q > 0 ? $this->store->nextPacketId($session->clientId) : 0;
                $retained .= Packet::publish($m['topic'], $m['payload'], $q, true, $id);
            }
        }
        $outcome->reply = Packet::suback($packetId, $codes) . $retained;

        return $outcome;
    }

    private function unsubscribe(Reader $r, Session $session): Outcome
    {
        if ($r->flags !== 2) {
            throw new MalformedPacket('UNSUBSCRIBE flags must be 0010');
        }
        $packetId = $r->u16();
        $filters = [];
        while (!$r->atEnd()) {
            $filters[] = $r->utf8();
        }
        if ($filters === []) {
            throw new MalformedPacket('UNSUBSCRIBE without a topic filter');
        }
        $outcome = new Outcome();
        foreach ($filters as $filter) {
            $this->store->unsubscribe($session->clientId, $filter);
            $outcome->pushes[] = ['leave', Topic::group($filter)];
        }
        $outcome->reply = Packet::ack(Packet::UNSUBACK, $packetId);

        return $outcome;
    }

    private function ping(Reader $r): Outcome
    {
        $r->end();
        $outcome = new Outcome();
        $outcome->reply = Packet::pingresp();

        return $outcome;
    }

    /** PUBACK from a subscriber: nothing to do (QoS 1 deliveries are not kept for redelivery). */
    private function noReply(Reader $r, int $flags): Outcome
    {
        if ($r->flags !== $flags) {
            throw new MalformedPacket('reserved flags set');
        }
        $r->u16();
        $r->end();

        return new Outcome();
    }

    private function disconnect(Reader $r, Session $session): Outcome
    {
        $r->end();
        // 3.14.4: a DISCONNECT discards the will.
        $outcome = new Outcome();
        $outcome->close = true;
        $outcome->state = $session->with(dropWill: true)->toState();

        return $outcome;
    }
}
