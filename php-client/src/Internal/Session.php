<?php

declare(strict_types=1);

namespace Pier\Internal;

use Pier\Exception\ProtocolException;
use Pier\Exception\RelayException;

/**
 * One worker's conversation with the server: framing over a {@see Relay}, the pid handshake, the stop
 * request, and the rule that each request gets exactly one answer. {@see \Pier\Worker} and
 * {@see \Pier\Tcp\TcpWorker} share one, so error()/stop() and respond() see the same pending request.
 *
 * Answers are batched without delaying anyone: an answer is written at once unless the next event is
 * already buffered (the server sent several; PROTOCOL.md "Several events in flight"); then it waits
 * while that event is handled, and the batch's answers leave in one write, at the latest when the
 * worker would block reading, stops, ends, or holds {@see self::MAX_HELD} bytes.
 *
 * The fields the per-event path reads and writes are public (this class is internal): TcpWorker's
 * waitRequest() and respond() take a buffered event and answer it themselves, and come here only for
 * the rest (a read of the relay, a control frame, an error, a state to attach). A PHP call costs
 * ~200 instructions, about what the rest of taking an event costs; as calls to methods of this
 * class, the per-event path made three more of them under load.
 *
 * @internal not part of Pier's API
 */
final class Session
{
    /**
     * Smallest read from the relay after a read that brought fewer than {@see SMALL_BATCH} bytes
     * (one event at a time): one read usually brings a whole event, and PHP allocates the string a
     * read asks for before reading, a 64 KiB one from its page allocator where this size comes
     * from a small bin (~250 fewer instructions per event, truncation included).
     */
    private const SMALL_READ = 3000;

    /**
     * A read that brought fewer bytes than this (an event or two) makes the next one ask for
     * {@see SMALL_READ} only. Well below it: a small read that fills up, leaving events in the
     * relay, sends the answers of those it brought in a write of their own (at 100 × 1 with 2 KiB
     * asked after reads under 2 KiB, the worker's system calls went from 0.13 to 0.26 per event).
     */
    private const SMALL_BATCH = 1024;

    /** Smallest read from the relay after a larger one: a batch of events. */
    private const READ_SIZE = 65536;

    /** Answer bytes held for a batch before they are written anyway. */
    private const MAX_HELD = 65536;

    /** Most frame leads (and reply heads per context) remembered; past it the memo starts afresh. */
    private const MAX_HEADERS = 256;

    /** The bytes of a frame {@see $leads} is keyed by: its 12-byte header and its first option. */
    public const LEAD_SIZE = 16;

    /**
     * {@see Frame::HEADER_SIZE} for nextEvent(), which uses it for every event: PHP folds a constant
     * of this class in when it compiles this file, but fetches another class's at run time (~30
     * instructions a use) unless that class was loaded first. TcpWorkerTest checks they agree.
     */
    private const HEADER_SIZE = 12;

    /** The message setState() throws when the server does not support connection state. */
    public const NO_STATE_FEATURE = "connection state needs a Pier server (PIER_FEATURES has no 'state')";

    /** The message the push methods throw when the server does not support server push. */
    public const NO_PUSH_FEATURE = "server push needs a Pier server (PIER_FEATURES has no 'push')";

    /** The message setIdleTimeout() throws when the server does not support it. */
    public const NO_IDLE_TIMEOUT_FEATURE = "a per-connection idle timeout needs a Pier server (PIER_FEATURES has no 'idle_timeout')";

    /** The longest idle timeout the server accepts, in milliseconds (a week; PROTOCOL.md). */
    public const MAX_IDLE_TIMEOUT_MS = 604800000;

    /** The message startTls() throws when the server does not support STARTTLS. */
    public const NO_STARTTLS_FEATURE = "STARTTLS needs a Pier server (PIER_FEATURES has no 'starttls')";

    /** {@see $phase}: no request is pending (none was taken yet, or the last one was answered). */
    public const READY = 0;

    /** {@see $phase}: a request was taken and has no answer yet. */
    public const PENDING = 1;

    /** {@see $phase}: as PENDING, with a state to attach to the answer ({@see $state}). */
    public const PENDING_STATE = 2;

    // The fields written for every event ($buffer, $offset, $next, $phase, $idle, $held) are
    // declared without a type, their types in @var: PHP 8.2 without opcache checks a typed
    // property's every write, even an int's or a string's, ~36 instructions more than an untyped
    // one's (measured; 6 to 7 writes per event). Only this class and TcpWorker write them.

    /** @var string bytes read from the relay and not yet taken as frames, from $offset on */
    public $buffer = '';

    /** @var int where the next frame starts in $buffer */
    public $offset = 0;

    /**
     * @var array{0: int, 1: int}|false|null what {@see $leads} says of the frame at $offset, once an
     *      answer found it whole (TcpWorker::respond(), send()): always a plain event's (only those
     *      are in $leads), and set only when no request is pending, so that
     *      TcpWorker::waitRequest() takes that event on one check of this field (~90 instructions
     *      fewer per event in a batch than asking for the phase and the flags too).
     *      False once TcpWorker::respond() wrote its answer to {@see $out} whole with nothing
     *      buffered or held (one event per read): then waitRequest() reads {@see $in} itself on
     *      this one check, where it asked whether every byte was taken, nothing is held, no
     *      request is pending and the stream is there (with that path's checks nested: 7,106 →
     *      6,458 instructions per event, bench/worker-ir.sh). Nothing between that answer and
     *      the next waitRequest() changes those: only nextEvent(), which waitRequest() calls after
     *      setting this back to null, reads the relay, and anything else needs a pending request
     *      or keeps them (error() and stop() write at once with nothing buffered). Only
     *      waitRequest() and nextEvent() read it.
     */
    public $next = null;

    /**
     * Where the request/answer cycle is: READY, PENDING or PENDING_STATE ({@see $idle}: whether no
     * request was taken yet). An int, not an enum: it is read and written twice per event, and PHP
     * 8.2 without opcache looks up an enum-typed property's class on every write (~280 instructions
     * per event). A state to attach is a phase of its own so that TcpWorker::respond() tells a stock
     * answer to a pending request by one comparison (~50 instructions fewer per event than asking
     * for the state too); TcpWorker has its own copies of the values (PHP fetches another class's
     * constant at run time on every use, ~30 instructions).
     *
     * The hot paths compare ints with `==`: for two ints PHP 8.2 without opcache compares inline,
     * where `===` calls zend_is_identical() (~23 instructions each time).
     *
     * @var int
     */
    public $phase = self::READY;

    /** @var bool whether no request was taken yet (for the message when something answers too early) */
    private $idle = true;

    /** The state to attach to the next answer (setState()); null = send a stock one-option reply. */
    public ?string $state = null;

    /** Set once the server asked to stop or closed the relay: waitRequest() keeps returning null. */
    private bool $finished = false;

    /** @var string frames written by this worker and not sent yet: the answers of a batch */
    public $held = '';

    /**
     * @var array<string, array{0: int, 1: int}> the first {@see LEAD_SIZE} bytes of plain events'
     *      frames already checked (fewer when fewer were buffered) => [the frame's size, its option
     *      when it has exactly one, it is among those bytes and at most the payload's length, else
     *      -1] ({@see checkLead()}; flags 0: a control frame's lead is not kept)
     */
    public array $leads = [];

    /** @var array<string, array<int, string>> reply context => body length => the reply's bytes before the body */
    public array $replyHeads = [];

    /**
     * The relay's streams when it is a {@see StreamRelay} (every real worker's relay), which the
     * hot paths read and write themselves: a call to the relay's read() or write() costs about as
     * much as the rest of a one-event read. Those methods still handle everything that is not a
     * plain whole read or write (an error, the end of the stream, an interrupted call, a short
     * write), and null (other relays: memory, tests) sends everything through them.
     *
     * TcpWorker::waitRequest() reads it when it takes one event per read. Null also once the
     * loop is finished (the stop request, the end of the relay), so that nothing reads it again.
     *
     * @var resource|null
     */
    public mixed $in;

    /** @var resource|null {@see $in} */
    public readonly mixed $out;

    /**
     * @param Relay $relay    the transport to the server
     * @param bool  $hasState whether the server supports connection state (PIER_FEATURES has "state")
     * @param bool  $hasPush  whether the server supports server push (PIER_FEATURES has "push")
     * @param bool  $hasIdleTimeout whether the server takes per-connection idle timeouts
     *                              (PIER_FEATURES has "idle_timeout")
     */
    public function __construct(
        private readonly Relay $relay,
        private readonly bool $hasState,
        private readonly bool $hasPush = false,
        private readonly bool $hasIdleTimeout = false,
    ) {
        $this->in = $relay instanceof StreamRelay ? $relay->in : null;
        $this->out = $relay instanceof StreamRelay ? $relay->out : null;
        // A worker that leaves mid-batch (exit, a fatal error) still sends what it answered;
        // shutdown functions run in both cases, destructors not after a fatal error.
        $self = \WeakReference::create($this);
        register_shutdown_function(static function () use ($self): void {
            try {
                $self->get()?->flush();
            } catch (\Throwable) {
                // The relay is gone; there is nobody left to tell.
            }
        });
    }

    /**
     * Writes the answers held for the batch, if any.
     *
     * @throws RelayException
     */
    public function flush(): void
    {
        if ($this->held !== '') {
            $held = $this->held;
            $this->held = '';
            $this->relay->write($held);
        }
    }

    /**
     * Whether PIER_FEATURES (comma-separated) lists "idle_timeout".
     */
    public static function idleTimeoutFromEnvironment(): bool
    {
        return self::featureFromEnvironment('idle_timeout');
    }

    /**
     * Sends the idle_timeout command for the pending request's connection (PROTOCOL.md,
     * "idle_timeout"): null = the server's idle_timeout, 0 = none, else milliseconds. Nothing is sent
     * when it throws.
     *
     * @throws ProtocolException when the server does not support it, no request is pending, or the
     *                           value is out of range
     * @throws RelayException
     */
    public function setIdleTimeout(?int $milliseconds): void
    {
        if (!$this->hasIdleTimeout) {
            throw new ProtocolException(self::NO_IDLE_TIMEOUT_FEATURE);
        }
        if ($this->idle) {
            throw new ProtocolException('could not set the idle timeout: no request is being handled (it is sent during a request, after waitRequest())');
        }
        if ($this->phase == self::READY) {
            throw new ProtocolException('could not set the idle timeout: the request was already answered (it is sent before the answer)');
        }
        if ($milliseconds !== null && ($milliseconds < 0 || $milliseconds > self::MAX_IDLE_TIMEOUT_MS)) {
            throw new ProtocolException(sprintf('could not set the idle timeout: %d ms is not between 0 and %d (a week), or null for the server\'s', $milliseconds, self::MAX_IDLE_TIMEOUT_MS));
        }
        $header = '{"op":"idle_timeout","ms":' . ($milliseconds ?? 'null') . '}';
        $this->command($header, '');
    }

    /**
     * Whether PIER_FEATURES (comma-separated) lists "state".
     */
    public static function stateFromEnvironment(): bool
    {
        return self::featureFromEnvironment('state');
    }

    /**
     * Whether PIER_FEATURES (comma-separated) lists "push".
     */
    public static function pushFromEnvironment(): bool
    {
        return self::featureFromEnvironment('push');
    }

    private static function featureFromEnvironment(string $name): bool
    {
        $features = getenv('PIER_FEATURES');

        return \is_string($features) && \in_array($name, array_map('trim', explode(',', $features)), true);
    }

    /**
     * Checks that a push command may be sent now: the server supports push and a request is pending.
     *
     * @param non-empty-string $what the method, for the message ("send", "join", …)
     *
     * @throws ProtocolException
     */
    public function requirePush(string $what): void
    {
        if (!$this->hasPush) {
            throw new ProtocolException(self::NO_PUSH_FEATURE);
        }
        if ($this->idle) {
            throw new ProtocolException("could not {$what}: no request is being handled (push commands go out during a request, after waitRequest())");
        }
        if ($this->phase == self::READY) {
            throw new ProtocolException("could not {$what}: the request was already answered (push commands go out before the answer)");
        }
    }

    /**
     * Sends one command frame (PROTOCOL.md, "commands"): flags CODEC_JSON, one option = header length,
     * payload = header ‖ data. The caller checked {@see requirePush()}.
     *
     * @param non-empty-string $header compact JSON object with an "op" key
     *
     * @throws RelayException
     */
    public function command(string $header, string $data): void
    {
        // Behind the answers held for the batch, so the server sees every frame in order.
        $this->send(Frame::encode(Frame::CODEC_JSON, [\strlen($header)], $header . $data));
    }

    /**
     * Makes the next frame that is not a control frame whole in {@see $buffer} at {@see $offset}
     * (header checked), reading the relay and answering pid handshakes on the way, and returns what
     * its lead says ({@see $leads}: its size, its option or -1, [flags not 0]). The caller takes it:
     * moves {@see $offset} past it, clears {@see $next} and sets {@see $phase}
     * (TcpWorker::waitRequest(), which takes a frame send() already found whole without this call).
     * Null when the server asked the worker to stop or closed the relay.
     *
     * Run for every event that was not buffered whole (one event per read, the light-load case):
     * reading the relay when the buffer holds no whole frame is done here rather than in a method
     * of its own (a PHP call costs about as much as the rest of a pass through this loop).
     *
     * @return array{0: int, 1: int, 2?: true}|null
     *
     * @throws ProtocolException when the previous request is still unanswered, or a frame is corrupt
     * @throws RelayException    when the relay fails or closes in the middle of a frame
     */
    public function nextEvent(): ?array
    {
        if ($this->phase != self::READY) {
            throw new ProtocolException('could not wait for a request: the pending request has no answer yet (respond, read, close, error or stop first)');
        }
        while (!$this->finished) {
            $available = \strlen($this->buffer) - $this->offset;
            $size = 0;
            if ($available >= self::HEADER_SIZE) {
                // send() may have looked this frame up already.
                $lead = $this->next ?? $this->leads[\substr($this->buffer, $this->offset, self::LEAD_SIZE)] ?? $this->checkLead();
                $size = $lead[0];
                if ($available >= $size) {
                    // Flags 0, a plain event (what the server sends; no third entry in its lead),
                    // needs no look at the flags.
                    if (!isset($lead[2]) || (\ord($this->buffer[$this->offset + 1]) & Frame::CONTROL) === 0) {
                        // Every request is taken after this returned once (only a buffered frame
                        // is taken without it, and only this method fills the buffer).
                        $this->idle = false;

                        // Whole, so a one-option frame's option was among the looked-up bytes.
                        return $lead;
                    }
                    $frame = Frame::at($this->buffer, $this->offset, $size);
                    $this->offset += $size;
                    $this->next = null;
                    $this->control($frame);
                    continue;
                }
            }
            // About to block on the relay: the batch's answers go first.
            if ($this->held !== '') {
                $this->flush();
            }
            // $buffer still holds what the last read brought (or a frame's part and it).
            $want = \strlen($this->buffer) < self::SMALL_BATCH ? self::SMALL_READ : self::READ_SIZE;
            if ($size - $available > $want) {
                $want = $size - $available;
            }
            // The stream itself ({@see $in}); the relay's read() when that did not simply return bytes.
            $chunk = $this->in === null ? '' : @\fread($this->in, $want);
            if ($chunk === '' || $chunk === false) {
                $chunk = $this->relay->read($want);
                if ($chunk === '') {
                    if ($available !== 0) {
                        throw new RelayException(sprintf('could not read a frame: the relay closed in the middle of one (%d bytes of it received)', $available));
                    }
                    // A clean end of stream, between frames.
                    $this->finished = true;
                    $this->in = null;
                    try {
                        $this->flush();
                    } catch (RelayException) {
                        // The server closed the relay; the answers were only sent in case it still reads.
                    }
                    break;
                }
            }
            if ($available == 0) {
                $this->buffer = $chunk; // The usual case: every buffered frame was taken.
            } else {
                if ($this->offset > 0) {
                    $this->buffer = \substr($this->buffer, $this->offset);
                }
                $this->buffer .= $chunk;
            }
            $this->offset = 0;
        }

        return null;
    }

    /**
     * Sends the answer to the pending request, with the state set by {@see setState()} if any.
     * TcpWorker::respond() sends a stock answer to a pending request itself (its hot path) and
     * calls this for the rest: a state to attach, or no pending request (this throws).
     *
     * @param non-empty-string $context WRITE, CONTINUE, WRITECLOSE or CLOSE
     *
     * @throws ProtocolException when there is no pending request
     * @throws RelayException
     */
    public function answer(string $context, string $body): void
    {
        if ($this->phase == self::READY) {
            $this->requirePending('answering');
        }
        $this->phase = self::READY;
        if ($this->state !== null) {
            $state = $this->state;
            $this->state = null;
            $this->send(Frame::encode(0, [\strlen($context), \strlen($state)], $context . $state . $body));

            return;
        }
        $length = \strlen($body);
        $this->send(($this->replyHeads[$context][$length] ?? $this->replyHead($context, $length)) . $body);
    }

    /**
     * Encodes and remembers the bytes before the body of a stock reply ({@see $replyHeads}: a stock
     * reply's bytes before its body, header, CRC32, option and context, depend only on the context
     * and the body's length, which repeat); at most {@see self::MAX_HEADERS} per context.
     *
     * @param non-empty-string $context
     *
     * @return non-empty-string
     */
    public function replyHead(string $context, int $bodyLength): string
    {
        $contextLength = \strlen($context);
        $head = Frame::head(0, [$contextLength], $contextLength + $bodyLength) . $context;
        if (\count($this->replyHeads[$context] ?? []) >= self::MAX_HEADERS) {
            $this->replyHeads[$context] = [];
        }

        return $this->replyHeads[$context][$bodyLength] = $head;
    }

    /**
     * @throws ProtocolException when the server has no connection state, or there is no pending request
     */
    public function setState(string $state): void
    {
        if (!$this->hasState) {
            throw new ProtocolException(self::NO_STATE_FEATURE);
        }
        $this->requirePending('setting the state');
        $this->state = $state;
        $this->phase = self::PENDING_STATE;
    }

    /**
     * The starttls command frame (PROTOCOL.md, "tls and starttls"): the server writes the next answer
     * in plaintext, then starts TLS. Checked first, so nothing is sent when it throws.
     *
     * @throws ProtocolException when the server does not support STARTTLS, or there is no pending request
     * @throws RelayException
     */
    public function startTls(): void
    {
        if (!self::featureFromEnvironment('starttls')) {
            throw new ProtocolException(self::NO_STARTTLS_FEATURE);
        }
        $this->requirePending('startTls()');
        $this->command('{"op":"starttls"}', '');
    }

    /**
     * An error frame; it answers the pending request, if any.
     *
     * @throws RelayException
     */
    public function error(string $message): void
    {
        $this->settle();
        $this->send(Frame::encode(Frame::ERROR, [], $message));
    }

    /**
     * The stop reply ({"stop":true} context, empty body); it answers the pending request, if any.
     *
     * @throws RelayException
     */
    public function stop(): void
    {
        $this->settle();
        $this->held .= Frame::encode(0, [13], '{"stop":true}');
        $this->flush();
    }

    /**
     * Holds $frame for the batch when the next event is already buffered (it is handled before the
     * worker could block), else writes it at once with whatever is held. (TcpWorker::respond()
     * holds a stock answer itself when the next frame's lead is known and it fits.)
     *
     * @throws RelayException
     */
    public function send(string $frame): void
    {
        $available = \strlen($this->buffer) - $this->offset;
        if ($available >= Frame::HEADER_SIZE && \strlen($this->held) + \strlen($frame) < self::MAX_HELD) {
            // Is the next frame whole? (Then what its lead says is remembered for nextEvent().)
            try {
                $next = $this->leads[\substr($this->buffer, $this->offset, self::LEAD_SIZE)] ?? $this->checkLead();
            } catch (ProtocolException) {
                $next = [PHP_INT_MAX, -1]; // Corrupt bytes: send now; the next nextEvent() reports them.
            }
            if ($available >= $next[0]) {
                // Not while a request is pending (a push command) nor for a control frame: see $next.
                if ($this->phase == self::READY && !isset($next[2])) {
                    $this->next = $next;
                }
                $this->held .= $frame;

                return;
            }
        }
        if ($this->held === '') {
            $this->relay->write($frame);

            return;
        }
        $out = $this->held . $frame;
        $this->held = '';
        $this->relay->write($out);
    }

    private function settle(): void
    {
        $this->phase = self::READY;
        $this->state = null;
    }

    /**
     * @throws ProtocolException
     */
    private function requirePending(string $what): void
    {
        if ($this->idle) {
            throw new ProtocolException("answering before any request: {$what} needs a request from waitRequest()");
        }
        if ($this->phase == self::READY) {
            throw new ProtocolException("answering twice: {$what} after the request was already answered");
        }
    }

    /**
     * A control frame: answers a pid handshake, ends the loop on a stop request, ignores other keys (as
     * the stock worker does).
     *
     * @throws ProtocolException
     * @throws RelayException
     */
    private function control(Frame $frame): void
    {
        try {
            $command = json_decode($frame->payload, true, 4, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new ProtocolException('could not read a control frame from the server: ' . $e->getMessage(), 0, $e);
        }
        if (!\is_array($command)) {
            throw new ProtocolException('could not read a control frame from the server: its payload is not a JSON object');
        }
        if (!empty($command['stop'])) {
            $this->finished = true;
            $this->in = null;
            // Nothing after the stop request is read: no answer waits for a frame buffered behind it.
            $this->buffer = '';
            $this->offset = 0;
            $this->flush();

            return;
        }
        if (\array_key_exists('pid', $command)) {
            $this->send(Frame::encode(Frame::CONTROL, [], json_encode(['pid' => getmypid()], JSON_THROW_ON_ERROR)));
        }
    }

    /**
     * Checks the frame header buffered at $offset (version, length, CRC32) and returns its frame's
     * size and, for a frame with exactly one option whose bytes are buffered and which is at most
     * the payload's length (a TCP event's context length that fits), that option (-1 otherwise:
     * TcpWorker decodes and checks those frames itself), and a third entry (true) when its flags
     * are not 0 (not a plain event: a look at the flags is needed only then). A plain event's are
     * remembered in $leads under the frame's first {@see LEAD_SIZE} bytes (all there are when
     * fewer are buffered: such a key can only come back when the frame is not whole, so its -1 is
     * never taken for a one-option frame's option).
     *
     * Checking a header costs more than the rest of reading the frame, and the server's leads repeat
     * (one per payload and context length), so nextEvent() and send() look a lead up in $leads first
     * and call this only for one not seen yet. The memo holds at most {@see self::MAX_HEADERS}. A
     * control frame's lead is not remembered: control frames are rare (the pid handshake, the stop
     * request), and with only plain events' leads in the memo, a lead found there (TcpWorker's hot
     * paths, {@see $next}) needs no look at its flags.
     *
     * @return array{0: int, 1: int, 2?: true}
     *
     * @throws ProtocolException when the header is not a goridge v3 header
     */
    private function checkLead(): array
    {
        $lead = substr($this->buffer, $this->offset, self::LEAD_SIZE);
        $size = Frame::sizeAt($lead, 0);
        // Version 1 with four header words (sizeAt() checked the version): one option.
        $option = $lead[0] === "\x14" && \strlen($lead) === self::LEAD_SIZE ? unpack('V', $lead, Frame::HEADER_SIZE)[1] : -1;
        if ($option > $size - self::LEAD_SIZE) {
            $option = -1;
        }
        if ($lead[1] !== "\0") {
            return [$size, $option, true];
        }
        if (\count($this->leads) >= self::MAX_HEADERS) {
            $this->leads = [];
        }

        return $this->leads[$lead] = [$size, $option];
    }
}
