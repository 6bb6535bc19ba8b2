<?php

declare(strict_types=1);

namespace Pier\Tcp;

use Pier\Exception\ProtocolException;
use Pier\Exception\RelayException;
use Pier\Internal\Access;
use Pier\Internal\Frame;
use Pier\Internal\Session;
// Imported from its own namespace on purpose: respond()'s default (TcpResponse::Respond) is
// evaluated on every call that leaves it out, and PHP 8.2 without opcache looks its class up by
// the name the default was compiled with. Through an import that name is the class's own
// interned one, whose class PHP caches; resolved against the namespace it is a string made
// for the default, lower-cased, hashed and looked up on every call (~430 instructions more
// per answer, measured). Reflection reads the same default either way.
use Pier\Tcp\TcpResponse;
use Pier\Worker;

/**
 * The TCP worker loop: wait for an event of some connection, answer it, repeat.
 *
 * ```php
 * $tcp = TcpWorker::create();
 * while ($request = $tcp->waitRequest()) {
 *     $tcp->respond($request->getBody());
 * }
 * ```
 */
final class TcpWorker
{
    /** The longest group name the server accepts, in bytes (PROTOCOL.md, "push"). */
    private const MAX_GROUP = 128;

    /** Most event contexts remembered by {@see waitRequest()}; past it the memo starts afresh. */
    private const MAX_CONTEXTS = 4096;

    // Session's and Frame's constants that waitRequest() and respond() use for every event, as
    // literals here: PHP folds a constant of this class in when it compiles this file, but fetches
    // another class's at run time (~30 instructions a use) unless that class was loaded before this
    // file was compiled, which it is not (TcpWorker is loaded first). TcpWorkerTest checks they agree.

    /** {@see Session::LEAD_SIZE} */
    private const LEAD_SIZE = 16;

    /** {@see Frame::HEADER_SIZE} */
    private const HEADER_SIZE = 12;

    /** {@see Session::SMALL_READ} */
    private const SMALL_READ = 3000;

    /** {@see Session::SMALL_BATCH} */
    private const SMALL_BATCH = 1024;

    /** {@see Session::READ_SIZE} */
    private const READ_SIZE = 65536;

    /** {@see Session::MAX_HELD} */
    private const MAX_HELD = 65536;

    /** {@see Session::READY} */
    private const READY = 0;

    /** {@see Session::PENDING} */
    private const PENDING = 1;

    /** The conversation shared with $worker, so Worker::error()/stop() answer the same request. */
    private readonly Session $session;

    /**
     * @var array<string, TcpRequest> the context of a DATA event without state (its JSON bytes) =>
     *      what it says, as a request without body and with state '' ({@see Access::requestTemplate()})
     */
    private array $contexts = [];

    /**
     * @var array<string, TcpRequest> the same for DATA events that carry a connection state: requests
     *      without body and state
     */
    private array $statedContexts = [];

    /** The context {@see context()} decoded last into a template for {@see $contexts}. */
    private string $lastContext = '';

    /** @var TcpRequest|null {@see $lastContext}'s template (untyped, as {@see $current}) */
    private $lastTemplate = null;

    /** @var \Closure(TcpRequest, string): TcpRequest {@see Access::requestCompleter()} */
    private readonly \Closure $complete;

    /** @var \Closure(TcpRequest, string, string): TcpRequest {@see Access::statedRequestCompleter()} */
    private readonly \Closure $completeStated;

    /**
     * The last request waitRequest() returned: push commands default to its connection, and a
     * broadcast without a group to its server's connections.
     *
     * Untyped: it is written for every event, and PHP 8.2 without opcache checks a class-typed
     * property's every write by looking the class up (~90 instructions per event, measured);
     * only waitRequest() writes it, with what it returns (declared ?TcpRequest).
     *
     * @var TcpRequest|null
     */
    private $current = null;

    public function __construct(
        private readonly Worker $worker,
    ) {
        $this->session = Access::session($worker);
        $this->complete = Access::requestCompleter();
        $this->completeStated = Access::statedRequestCompleter();
    }

    /**
     * A TcpWorker over {@see Worker::create()}.
     *
     * @throws RelayException
     */
    public static function create(): TcpWorker
    {
        return new self(Worker::create());
    }

    public function getWorker(): Worker
    {
        return $this->worker;
    }

    /**
     * Blocks until the server sends an event and returns it; answers pid handshakes on the way. Null when
     * the server asks the worker to stop or closes the relay: leave the loop and let the script end.
     *
     * @throws ProtocolException when the previous request has no answer yet, or the server's frame is corrupt
     *                           or not a TCP event
     * @throws RelayException    when the relay fails or ends in the middle of a frame
     */
    public function waitRequest(): ?TcpRequest
    {
        // A hot path, run for every packet: the event is taken off the session's buffer and
        // decoded here, not in methods of their own (a PHP call costs about as much as the checks
        // below). Under load the server sends several events per read, and respond() found the next
        // one whole while it held the answer ({@see Session::$next}: a plain event's lead, set only
        // when no request is pending, so nothing else needs checking).
        // Anything else (a read of the relay, a control frame, a part of a frame, a request
        // still unanswered) is the session's. Functions are called fully qualified (`\substr`):
        // PHP resolves an unqualified call in a namespace at run time, on every call (the
        // namespace's function first), ~30 instructions more than one bound when compiled.
        // Conditions are nested ifs rather than `&&`: PHP 8.2 without opcache compiles each `&&`
        // to two more instructions of its VM (JMPZ_EX, BOOL) than an `if`, whose compare and
        // jump run as one.
        $session = $this->session;
        $lead = $session->next;
        if ($lead === false) {
            // respond() wrote the last answer to the stream itself (one event per read, light
            // load; {@see Session::$next}): every byte read was taken, nothing is held and no
            // request is pending, so the relay is read here, and a plain event it brings whole,
            // whose lead is known, is taken without a call of nextEvent() (~800 instructions fewer
            // per event, measured: the call, and its loop's two passes of checks, each a read of
            // one of the session's properties). Anything else is nextEvent()'s: a lead not seen
            // yet, a control frame, part of a frame, an empty read (the end of the relay, an
            // interrupted or failed read: nextEvent() reads again and tells which).
            // (As nextEvent() sizes its read: {@see Session::SMALL_READ}.)
            $buffer = @\fread($session->in, \strlen($session->buffer) < self::SMALL_BATCH ? self::SMALL_READ : self::READ_SIZE);
            if ($buffer === false) {
                $buffer = '';
            }
            $session->buffer = $buffer;
            // (No length check first: a lead is remembered under 12 bytes or more, so fewer
            // find nothing; only plain events' leads are remembered: no look at the flags.)
            $lead = $session->leads[\substr($buffer, 0, self::LEAD_SIZE)] ?? null;
            if ($lead !== null) {
                $size = $lead[0];
                if (\strlen($buffer) >= $size) {
                    $contextLength = $lead[1];
                    if ($contextLength >= 0) {
                        // As below, and one event per read is often a connection's next event
                        // after its last: the context {@see context()} decoded last is compared
                        // before the memo is looked up (a string compare where hashing a
                        // ~100-byte key costs ~480 instructions). Only here: under load the
                        // events of a batch rotate over the connections, and the compare would
                        // mostly fail (~110 more per event).
                        $session->offset = $size;
                        $session->next = null;
                        $session->phase = self::PENDING;
                        $context = \substr($buffer, self::LEAD_SIZE, $contextLength);

                        return $this->current = ($this->complete)(
                            $context === $this->lastContext ? $this->lastTemplate : ($this->contexts[$context] ?? $this->context($context, false)),
                            \substr($buffer, self::LEAD_SIZE + $contextLength, $size - self::LEAD_SIZE - $contextLength),
                        );
                    }
                } else {
                    $lead = null;
                }
            }
            $offset = 0;
            if ($lead === null) {
                $session->offset = 0;
                $session->next = null;
            }
        } else {
            $offset = $session->offset;
            $buffer = $session->buffer;
        }
        if ($lead === null) {
            // Nothing found whole after the last answer: leftover bytes, held answers, a request
            // still unanswered, a lead not seen yet, a control frame, part of a frame, an empty
            // read. A lead is only known once nextEvent() has returned an event (only it and
            // send(), which answers one, check leads), so the session is no longer idle.
            $lead = $session->nextEvent();
            if ($lead === null) {
                return null;
            }
            $offset = $session->offset;
            $buffer = $session->buffer;
        }
        // (Two reads, not `[$size, $contextLength] = $lead`: destructuring costs ~60 more.)
        $size = $lead[0];
        $contextLength = $lead[1];
        $session->offset = $offset + $size;
        $session->next = null;
        $session->phase = self::PENDING;
        // Decoding the context's JSON would be most of an event's cost, and a connection's DATA
        // events all have the same context (PROTOCOL.md, "TCP events": only the event name changes,
        // TLS facts are fixed once TLS is on), so what a DATA context says is decoded once and
        // remembered by its bytes (the same bytes always decode the same way), as a request
        // template that each event completes with its body (and state).
        //
        // Options: the context's length, and the state's when the connection has one. A
        // one-option frame's comes decoded with its lead, and checked against the payload's
        // length once per lead (Session::checkLead(); -1 for any other frame). Most events carry
        // no state: their template has state '' already, one readonly write fewer per event.
        if ($contextLength >= 0) {
            $payloadAt = $offset + self::LEAD_SIZE;
            $context = \substr($buffer, $payloadAt, $contextLength);

            return $this->current = ($this->complete)(
                $this->contexts[$context] ?? $this->context($context, false),
                \substr($buffer, $payloadAt + $contextLength, $size - self::LEAD_SIZE - $contextLength),
            );
        }
        $words = \ord($buffer[$offset]) & 0x0F;
        $payloadAt = $offset + $words * 4;
        $payloadLength = $offset + $size - $payloadAt;
        $stateLength = 0;
        $contextLength = null;
        if ($words == 4) {
            $contextLength = \unpack('V', $buffer, $offset + self::HEADER_SIZE)[1];
        } elseif ($words == 5) {
            [1 => $contextLength, 2 => $stateLength] = \unpack('V2', $buffer, $offset + self::HEADER_SIZE);
        }
        if ($contextLength === null || $contextLength + $stateLength > $payloadLength) {
            throw new ProtocolException(sprintf(
                'could not read a TCP event: %d options for a %d-byte payload (expected context length [, state length])',
                $words - 3,
                $payloadLength,
            ));
        }
        $context = \substr($buffer, $payloadAt, $contextLength);
        if ($stateLength == 0) {
            return $this->current = ($this->complete)(
                $this->contexts[$context] ?? $this->context($context, false),
                \substr($buffer, $payloadAt + $contextLength, $payloadLength - $contextLength),
            );
        }

        return $this->current = ($this->completeStated)(
            $this->statedContexts[$context] ?? $this->context($context, true),
            \substr($buffer, $payloadAt + $contextLength + $stateLength, $payloadLength - $contextLength - $stateLength),
            \substr($buffer, $payloadAt + $contextLength, $stateLength),
        );
    }

    /**
     * Answers the pending request: write $body to the client and keep reading ({@see TcpResponse::Respond}),
     * or as $response says.
     *
     * @throws ProtocolException when there is no pending request (answering twice, or before any request)
     * @throws RelayException
     */
    public function respond(string $body, TcpResponse $response = TcpResponse::Respond): void
    {
        // A hot path, as waitRequest(): a stock answer to the pending request is encoded and sent
        // or held here; the session's answer() does the rest (no pending request: it throws; a
        // state to attach: phase PENDING_STATE).
        $session = $this->session;
        if ($session->phase != self::PENDING) {
            $session->answer($response->value, $body);

            return;
        }
        $session->phase = self::READY;
        $length = \strlen($body);
        $frame = ($session->replyHeads[$response->value][$length] ?? $session->replyHead($response->value, $length)) . $body;
        $available = \strlen($session->buffer) - $session->offset;
        if ($available == 0) {
            // Nothing buffered (one event at a time, the light-load case): out at once, with what is
            // held. The stream itself ({@see Session::$out}); the session's send() for the rest of
            // a short write, a failed one (the relay reports it), or another relay.
            if ($session->held === '') {
                $written = $session->out === null ? 0 : @\fwrite($session->out, $frame);
                // (`==`: PHP 8.2 compares two ints inline, `===` calls a function; false != any length.)
                if ($written == \strlen($frame)) {
                    // Every byte read taken, nothing held, no request pending: the next
                    // waitRequest() reads the relay itself on this one check ({@see Session::$next}).
                    $session->next = false;

                    return;
                }
                $session->send($written > 0 ? \substr($frame, $written) : $frame);

                return;
            }
        } elseif ($available >= self::HEADER_SIZE) {
            // The next event is buffered: when it is whole (its lead known and all its bytes
            // there) the answer waits for the batch's write and waitRequest() takes that event
            // without a lookup; anything else is send()'s. (Nested ifs: see waitRequest().)
            $next = $session->leads[\substr($session->buffer, $session->offset, self::LEAD_SIZE)] ?? null;
            if ($next !== null) {
                if ($available >= $next[0]) {
                    if (\strlen($session->held) + \strlen($frame) < self::MAX_HELD) {
                        $session->next = $next;
                        $session->held .= $frame;

                        return;
                    }
                }
            }
        }
        $session->send($frame);
    }

    /**
     * Answers the pending request: write nothing and keep reading (CONTINUE).
     *
     * @throws ProtocolException when there is no pending request
     * @throws RelayException
     */
    public function read(): void
    {
        $this->respond('', TcpResponse::Read);
    }

    /**
     * Answers the pending request: close the connection without writing (CLOSE).
     *
     * @throws ProtocolException when there is no pending request
     * @throws RelayException
     */
    public function close(): void
    {
        $this->respond('', TcpResponse::Close);
    }

    /**
     * Attaches a connection state to the next answer (respond/read/close) of the pending request: the
     * server keeps it and delivers it with every later event of the connection
     * ({@see TcpRequest::getState()}). '' clears it. Binary-safe. A Pier extension: the server must
     * list "state" in PIER_FEATURES.
     *
     * @throws ProtocolException when the server does not support connection state, or there is no
     *                           pending request
     */
    public function setState(string $state): void
    {
        $this->session->setState($state);
    }

    /**
     * Sets the idle timeout of this request's connection: once its client sends no byte for
     * $milliseconds, the server closes it and sends its CLOSE event. 0 turns it off for this
     * connection; null (the default) goes back to the server's `idle_timeout`. For protocols with their own
     * keep-alive (MQTT: 1.5 × the CONNECT keep-alive). A Pier extension: the server must list
     * "idle_timeout" in PIER_FEATURES; valid while a request is being handled, before its answer.
     *
     * @throws ProtocolException when the server does not support it, no request is pending, or
     *                           $milliseconds is negative or over a week (nothing is sent)
     * @throws RelayException
     */
    public function setIdleTimeout(?int $milliseconds = null): void
    {
        $this->session->setIdleTimeout($milliseconds);
    }

    /**
     * Queues $data on connection $uuid's outbound queue (any live connection of the server, this one
     * included): it is written in order with that connection's replies. An unknown or closed uuid is
     * ignored by the server. Server push: the server must list "push" in PIER_FEATURES; valid while a
     * request is being handled, before its answer; the command goes out at once, ahead of the answer.
     *
     * @throws ProtocolException when the server does not support push, no request is pending, or $uuid is
     *                           empty or not UTF-8
     * @throws RelayException
     */
    public function send(string $uuid, string $data): void
    {
        $this->session->requirePush('send');
        $this->session->command(self::header(['op' => 'send', 'uuid' => self::uuid('send', $uuid)]), $data);
    }

    /**
     * Queues $data on every member of $group, or (null) on every connection of this request's server,
     * except the uuids in $except. Server push, as {@see send()}.
     *
     * @param array<array-key, mixed> $except uuids to leave out
     *
     * @throws ProtocolException
     * @throws RelayException
     */
    public function broadcast(string $data, ?string $group = null, array $except = []): void
    {
        $this->session->requirePush('broadcast');
        $header = ['op' => 'broadcast'];
        if ($group === null) {
            $header['server'] = $this->current?->server ?? '';
        } else {
            $header['group'] = self::group('broadcast', $group);
        }
        if ($except !== []) {
            $header['except'] = array_map(static fn (mixed $uuid): string => \is_string($uuid)
                ? self::uuid('broadcast', $uuid)
                : throw new ProtocolException('could not broadcast: $except must hold uuid strings only'), array_values($except));
        }
        $this->session->command(self::header($header), $data);
    }

    /**
     * Adds connection $uuid (null: this request's connection) to $group. Membership dies with the
     * connection; at most 64 groups per connection. Server push, as {@see send()}.
     *
     * @throws ProtocolException
     * @throws RelayException
     */
    public function join(string $group, ?string $uuid = null): void
    {
        $this->membership('join', $group, $uuid);
    }

    /**
     * Removes connection $uuid (null: this request's connection) from $group. Server push, as {@see send()}.
     *
     * @throws ProtocolException
     * @throws RelayException
     */
    public function leave(string $group, ?string $uuid = null): void
    {
        $this->membership('leave', $group, $uuid);
    }

    /**
     * Closes connection $uuid: what it has queued is still written, then it gets its CLOSE event. For
     * this request's own connection the close follows this request's answer (whose body is written).
     * close() is something else: it answers this request with CLOSE. Server push, as {@see send()}.
     *
     * @throws ProtocolException
     * @throws RelayException
     */
    public function disconnect(string $uuid): void
    {
        $this->session->requirePush('disconnect');
        $this->session->command(self::header(['op' => 'close', 'uuid' => self::uuid('disconnect', $uuid)]), '');
    }

    /**
     * @param 'join'|'leave' $op
     *
     * @throws ProtocolException
     * @throws RelayException
     */
    private function membership(string $op, string $group, ?string $uuid): void
    {
        $this->session->requirePush($op);
        $group = self::group($op, $group);
        $uuid = $uuid === null ? ($this->current?->connectionUuid ?? '') : self::uuid($op, $uuid);
        $this->session->command(self::header(['op' => $op, 'uuid' => $uuid, 'group' => $group]), '');
    }

    /**
     * Compact JSON as the server's codec writes it (no escaped slashes or Unicode).
     *
     * @param array<string, mixed> $header
     *
     * @return non-empty-string
     */
    private static function header(array $header): string
    {
        return json_encode($header, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_LINE_TERMINATORS);
    }

    /**
     * @throws ProtocolException when $uuid is empty or not UTF-8
     */
    private static function uuid(string $what, string $uuid): string
    {
        if ($uuid === '' || preg_match('//u', $uuid) !== 1) {
            throw new ProtocolException("could not {$what}: a uuid must be a non-empty UTF-8 string");
        }

        return $uuid;
    }

    /**
     * @throws ProtocolException when $group is not 1 to 128 bytes of UTF-8
     */
    private static function group(string $what, string $group): string
    {
        $length = \strlen($group);
        if ($length < 1 || $length > self::MAX_GROUP || preg_match('//u', $group) !== 1) {
            throw new ProtocolException(sprintf('could not %s: a group name must be 1 to %d bytes of UTF-8 (got %d bytes)', $what, self::MAX_GROUP, $length));
        }

        return $group;
    }

    /**
     * Pier extension (needs "starttls" in PIER_FEATURES; the server needs `tls` configured): the next
     * answer to the pending request (respond() or read()) is written in plaintext, then the server
     * starts TLS on the connection — SMTP's or IMAP's STARTTLS. Whatever the client sent after its
     * STARTTLS line is discarded by the server; later requests of the connection have
     * {@see TcpRequest::getTls()}.
     *
     * ```php
     * $tcp->startTls();
     * $tcp->respond("220 2.0.0 Ready to start TLS\r\n");
     * ```
     *
     * @throws ProtocolException when the server does not support STARTTLS (nothing is sent), or there is
     *                           no pending request
     * @throws RelayException
     */
    public function startTls(): void
    {
        $this->session->startTls();
    }

    /**
     * Decodes an event's context into a request template; remembers it when it is a DATA event's
     * ({@see waitRequest()}).
     *
     * @param bool $stated whether the event carries a state (the template then has none, else '')
     *
     * @throws ProtocolException when the context is not a TCP event's
     */
    private function context(string $json, bool $stated): TcpRequest
    {
        try {
            $context = json_decode($json, true, 4, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new ProtocolException('could not read a TCP event: its context is not JSON: ' . $e->getMessage(), 0, $e);
        }
        if (!\is_array($context)) {
            throw new ProtocolException('could not read a TCP event: its context is not a JSON object');
        }
        foreach (['remote_addr', 'server', 'uuid', 'event'] as $key) {
            if (!isset($context[$key]) || !\is_string($context[$key])) {
                throw new ProtocolException("could not read a TCP event: its context has no string \"{$key}\"");
            }
        }
        /** @var array{remote_addr: string, server: string, uuid: string, event: string, tls?: mixed} $context */
        $facts = null;
        $tls = $context['tls'] ?? null;
        if (\is_array($tls)) {
            $facts = [];
            foreach (['version', 'cipher', 'sni', 'client_subject', 'client_sha256'] as $key) {
                $value = $tls[$key] ?? null;
                $facts[$key] = \is_string($value) ? $value : null;
            }
            $facts['version'] ??= '';
            $facts['cipher'] ??= '';
        }
        $event = TcpEvent::tryFrom($context['event']) ?? TcpEvent::Unknown;
        /** @var array{version: string, cipher: string, sni: ?string, client_subject: ?string, client_sha256: ?string}|null $facts */
        $template = Access::requestTemplate($context['remote_addr'], $event, $context['uuid'], $context['server'], $facts, $stated ? null : '');
        // CONNECTED and CLOSE come once per connection: only DATA contexts are worth remembering.
        if ($event === TcpEvent::Data) {
            if ($stated) {
                if (\count($this->statedContexts) >= self::MAX_CONTEXTS) {
                    $this->statedContexts = [];
                }
                $this->statedContexts[$json] = $template;
            } else {
                if (\count($this->contexts) >= self::MAX_CONTEXTS) {
                    $this->contexts = [];
                }
                $this->contexts[$json] = $template;
                $this->lastContext = $json;
                $this->lastTemplate = $template;
            }
        }

        return $template;
    }
}
