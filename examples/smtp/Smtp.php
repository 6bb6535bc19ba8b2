<?php

declare(strict_types=1);

/*
 * The SMTP example's logic, free of any I/O but the maildir: a subset of RFC 5321 (with RFC 1870 SIZE,
 * RFC 2920 PIPELINING, RFC 6152 8BITMIME). The worker loop is in worker.php.
 *
 * Pier frames the stream on "\r\n", so every command line and every line of message text arrives as
 * its own DATA event, pipelined or not. The SMTP transaction lives in Pier's connection state
 * (`$request->getState()` / `$tcp->setState()`): any worker can take any event of any connection, and
 * no worker keeps anything between events. Message text goes line by line into a spool file in the
 * maildir, so a message of many megabytes never sits in memory or in the state; the lone "." renames
 * the spool file to its final `.eml` name, so a reader of the maildir never sees half a message.
 *
 * TLS: a server may offer STARTTLS (RFC 3207): the worker answers 220 with Pier's STARTTLS command
 * (`$tcp->startTls()`), Pier writes the 220 in plaintext and runs the handshake, and the session starts
 * over (the client must EHLO again). Submission servers (RFC 6409) offer AUTH PLAIN and LOGIN
 * (RFC 4954) only over TLS, check them against a file of password_hash() hashes, and refuse MAIL
 * before AUTH with 530.
 */

namespace PierExample\Smtp;

use Pier\Tcp\TcpResponse;

/** Where a connection is in the SMTP dialogue. */
enum Phase: string
{
    /** Reading command lines. */
    case Command = 'command';
    /** Reading message text after DATA, up to the lone ".". */
    case Data = 'data';
    /** AUTH PLAIN without an initial response: reading the base64 credentials. */
    case AuthPlain = 'auth-plain';
    /** AUTH LOGIN: reading the base64 user name. */
    case AuthLoginUser = 'auth-login-user';
    /** AUTH LOGIN: reading the base64 password (the user name is in the transaction). */
    case AuthLoginPassword = 'auth-login-password';
}

/**
 * The state of one SMTP connection, as Pier keeps it between events (JSON in the connection state).
 * Addresses and the HELO name are checked to be printable ASCII before they get here.
 */
final class Transaction
{
    /**
     * @param string       $helo       the name the client gave in HELO/EHLO; '' before it did
     * @param string|null  $sender     the MAIL FROM reverse-path ('' is the null sender <>); null: no MAIL yet
     * @param list<string> $recipients the accepted RCPT TO forward-paths, in order
     * @param Phase        $phase      commands, or message text after DATA
     * @param string       $spool      the spool file receiving the message text while in DATA
     * @param int          $size       bytes of message text received so far (after dot-unstuffing)
     * @param bool         $tooBig     the text passed the size limit: the rest is read and dropped
     * @param string       $user       the authenticated user (AUTH); '' before
     * @param string       $loginUser  AUTH LOGIN: the user name given, while the password is awaited
     */
    public function __construct(
        public readonly string $helo = '',
        public readonly ?string $sender = null,
        public readonly array $recipients = [],
        public readonly Phase $phase = Phase::Command,
        public readonly string $spool = '',
        public readonly int $size = 0,
        public readonly bool $tooBig = false,
        public readonly string $user = '',
        public readonly string $loginUser = '',
    ) {
    }

    /** Reads the connection state Pier delivered; '' (a new connection) is the empty transaction. */
    public static function fromState(string $state): self
    {
        if ($state === '') {
            return new self();
        }
        /** @var array{helo: string, sender: string|null, recipients: list<string>, phase: string, spool: string, size: int, tooBig: bool, user?: string, loginUser?: string} $s */
        $s = json_decode($state, true, 4, JSON_THROW_ON_ERROR);

        return new self($s['helo'], $s['sender'], $s['recipients'], Phase::from($s['phase']), $s['spool'], $s['size'], $s['tooBig'], $s['user'] ?? '', $s['loginUser'] ?? '');
    }

    /** The connection state to hand back to Pier. */
    public function toState(): string
    {
        return json_encode([
            'helo' => $this->helo,
            'sender' => $this->sender,
            'recipients' => $this->recipients,
            'phase' => $this->phase->value,
            'spool' => $this->spool,
            'size' => $this->size,
            'tooBig' => $this->tooBig,
            'user' => $this->user,
            'loginUser' => $this->loginUser,
        ], JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES);
    }

    /** RSET, EHLO and the end of a message: the mail transaction ends, the greeting and AUTH stay. */
    public function reset(?string $helo = null): self
    {
        return new self($helo ?? $this->helo, user: $this->user);
    }

    public function withSender(string $sender): self
    {
        return new self($this->helo, $sender, user: $this->user);
    }

    public function withRecipient(string $recipient): self
    {
        return new self($this->helo, $this->sender, [...$this->recipients, $recipient], user: $this->user);
    }

    public function inData(string $spool): self
    {
        return new self($this->helo, $this->sender, $this->recipients, Phase::Data, $spool, user: $this->user);
    }

    public function received(int $bytes, bool $tooBig): self
    {
        return new self($this->helo, $this->sender, $this->recipients, Phase::Data, $this->spool, $this->size + $bytes, $tooBig, $this->user);
    }

    /** An AUTH exchange waits for the client's next line. */
    public function authenticating(Phase $phase, string $loginUser = ''): self
    {
        return new self($this->helo, phase: $phase, loginUser: $loginUser);
    }

    /** AUTH ended: as $user ('' when it failed or was cancelled). */
    public function authenticated(string $user): self
    {
        return new self($this->helo, user: $user);
    }
}

/** What to answer one event: the bytes for the client, how Pier should go on, and the new state. */
final class Reply
{
    /**
     * @param string           $text        sent to the client ('' with Read)
     * @param TcpResponse      $response    Respond, Read (send nothing) or RespondClose
     * @param Transaction|null $transaction the new connection state; null leaves it as it is
     * @param bool             $startTls    start TLS once $text is written (STARTTLS)
     */
    public function __construct(
        public readonly string $text,
        public readonly TcpResponse $response,
        public readonly ?Transaction $transaction,
        public readonly bool $startTls = false,
    ) {
    }
}

/**
 * The maildir: one `.eml` file per accepted message, written under a temporary name and renamed, so
 * only whole messages ever carry the `.eml` name. Temporary names start with a dot.
 */
final class Maildir
{
    public function __construct(public readonly string $directory)
    {
        if (!is_dir($directory) && !@mkdir($directory, 0o777, true) && !is_dir($directory)) {
            throw new \RuntimeException("could not create the maildir {$directory}");
        }
    }

    /** Starts a message: a new spool file holding the envelope headers. Returns its path. */
    public function spool(string $header): string
    {
        $path = sprintf('%s/.%s.tmp', $this->directory, bin2hex(random_bytes(12)));
        $this->write($path, $header, 'xb');

        return $path;
    }

    public function append(string $spool, string $bytes): void
    {
        $this->write($spool, $bytes, 'ab');
    }

    /** Gives the spool file its final name; returns the message id (the file is `<id>.eml`). */
    public function deliver(string $spool): string
    {
        $id = gmdate('Ymd\THis\Z') . '-' . bin2hex(random_bytes(6));
        if (!rename($spool, "{$this->directory}/{$id}.eml")) {
            throw new \RuntimeException("could not rename {$spool} to {$id}.eml");
        }

        return $id;
    }

    /** Drops an unfinished message (RSET cannot interrupt DATA; an over-size message or a lost connection can). */
    public function discard(string $spool): void
    {
        if ($spool !== '' && is_file($spool)) {
            unlink($spool);
        }
    }

    private function write(string $path, string $bytes, string $mode): void
    {
        $file = fopen($path, $mode);
        if ($file === false || fwrite($file, $bytes) !== strlen($bytes) || !fclose($file)) {
            throw new \RuntimeException("could not write the spool file {$path}");
        }
    }
}

/**
 * The submission servers' users: a file of `name:hash` lines, each hash from PHP's password_hash()
 * (`php -r 'echo "alice:", password_hash("secret", PASSWORD_DEFAULT), "\n";' >> users`). Blank lines and
 * lines starting with # are ignored. Read once, when the worker starts.
 */
final class Users
{
    /** A hash of a random password nobody knows, verified for unknown users so they take as long as known ones. */
    private const NOBODY = '$2y$10$jCKn1./yzvvFlorgHUdcmO210WednsQsLquSnvDec6fGt1ihHcCpW';

    /** @param array<string, string> $hashes hash by user name */
    private function __construct(private readonly array $hashes)
    {
    }

    /** The users of $file; none (every AUTH fails) when it cannot be read, said on stderr. */
    public static function fromFile(string $file): self
    {
        $text = is_readable($file) ? file_get_contents($file) : false;
        if ($text === false) {
            fwrite(STDERR, "smtp example: cannot read the users file {$file}: every AUTH fails\n");

            return new self([]);
        }
        $hashes = [];
        foreach (preg_split('/\r?\n/', $text) ?: [] as $line) {
            if ($line === '' || $line[0] === '#' || !str_contains($line, ':')) {
                continue;
            }
            [$name, $hash] = explode(':', $line, 2);
            $hashes[$name] = $hash;
        }

        return new self($hashes);
    }

    public function verify(string $user, string $password): bool
    {
        $known = isset($this->hashes[$user]);

        return password_verify($password, $this->hashes[$user] ?? self::NOBODY) && $known;
    }
}

/** One SMTP server: answers each event of a connection from the line and the transaction so far. */
final class Server
{
    /** RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients. */
    private const MAX_RECIPIENTS = 100;

    /** RFC 5321 §4.5.3.1.3: a path is at most 256 octets; it also keeps the state well under max_state_size. */
    private const MAX_PATH = 256;

    /** A mailbox or the null path, as this example accepts them: printable ASCII, no spaces or brackets. */
    private const PATH = '<([\x21-\x3B\x3D\x3F-\x7E]*)>';

    /**
     * @param string     $hostname the name in the greeting and in the EHLO answer
     * @param Maildir    $maildir  where accepted messages go
     * @param int        $maxSize  the largest message accepted (advertised as SIZE), in bytes
     * @param bool       $starttls offer STARTTLS on plaintext connections (the server must have TLS)
     * @param Users|null $users    a submission server: AUTH (over TLS only) is required before MAIL
     */
    public function __construct(
        private readonly string $hostname,
        private readonly Maildir $maildir,
        private readonly int $maxSize,
        private readonly bool $starttls = false,
        private readonly ?Users $users = null,
    ) {
    }

    public function connected(): Reply
    {
        return $this->say("220 {$this->hostname} ESMTP Pier example ready");
    }

    /** A lost or closed connection: an unfinished message is dropped. */
    public function closed(Transaction $tx): void
    {
        $this->maildir->discard($tx->spool);
    }

    /**
     * One line from the client, its "\r\n" included (the last line before EOF may lack it); $tls: the
     * connection is TLS ($request->getTls() !== null).
     */
    public function line(string $line, Transaction $tx, bool $tls = false): Reply
    {
        return match ($tx->phase) {
            Phase::Data => $this->text($line, $tx),
            Phase::Command => $this->command($line, $tx, $tls),
            default => $this->authStep($line, $tx),
        };
    }

    private function command(string $line, Transaction $tx, bool $tls): Reply
    {
        $line = str_ends_with($line, "\r\n") ? substr($line, 0, -2) : $line;
        if (preg_match('/^([A-Za-z]{4,8})(?: (.*))?\z/s', $line, $m) !== 1) {
            return $this->say('500 5.5.2 command not recognized');
        }
        $verb = strtoupper($m[1]);
        $arg = $m[2] ?? '';

        switch ($verb) {
            case 'EHLO':
            case 'HELO':
                if (preg_match('/^[\x21-\x7E]{1,255}\z/', $arg) !== 1) {
                    return $this->say("501 5.5.4 syntax: {$verb} hostname");
                }
                $lines = $verb === 'HELO'
                    ? ["{$this->hostname}"]
                    : ["{$this->hostname} greets {$arg}", 'PIPELINING', "SIZE {$this->maxSize}", '8BITMIME'];
                if ($verb === 'EHLO' && $this->starttls && !$tls) {
                    $lines[] = 'STARTTLS';
                }
                if ($verb === 'EHLO' && $this->users !== null && $tls && $tx->user === '') {
                    $lines[] = 'AUTH PLAIN LOGIN';
                }
                $last = array_pop($lines);
                $text = implode('', array_map(static fn (string $l): string => "250-{$l}\r\n", $lines)) . "250 {$last}";

                return $this->say($text, $tx->reset($arg));

            case 'STARTTLS':
                if (!$this->starttls) {
                    return $this->say('502 5.5.1 STARTTLS not offered here');
                }
                if ($tls) {
                    return $this->say('503 5.5.1 TLS already active');
                }
                if ($arg !== '') {
                    return $this->say('501 5.5.4 syntax: STARTTLS');
                }
                // RFC 3207 §4.2: after the handshake the session starts over, forgetting EHLO.
                $this->maildir->discard($tx->spool);

                return new Reply("220 2.0.0 Ready to start TLS\r\n", TcpResponse::Respond, new Transaction(), true);

            case 'AUTH':
                return $this->auth($arg, $tx, $tls);

            case 'MAIL':
                if ($tx->helo === '') {
                    return $this->say('503 5.5.1 send HELO or EHLO first');
                }
                if ($tx->sender !== null) {
                    return $this->say('503 5.5.1 nested MAIL command');
                }
                if ($this->users !== null && $tx->user === '') {
                    return $this->say('530 5.7.0 Authentication required');
                }
                if (preg_match('/^FROM: ?' . self::PATH . '((?: [A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3C\x3E-\x7E]+)?)*)\z/i', $arg, $m) !== 1 || strlen($m[1]) > self::MAX_PATH) {
                    return $this->say('501 5.5.4 syntax: MAIL FROM:<address>');
                }
                foreach ($m[2] === '' ? [] : explode(' ', substr($m[2], 1)) as $param) {
                    [$key, $value] = explode('=', $param, 2) + [1 => ''];
                    $bad = match (strtoupper($key)) {
                        'SIZE' => ctype_digit($value) && strlen($value) < 19
                            ? ((int) $value > $this->maxSize ? '552 5.3.4 message size exceeds fixed maximum message size' : null)
                            : '501 5.5.4 syntax: SIZE=<bytes>',
                        'BODY' => in_array(strtoupper($value), ['7BIT', '8BITMIME'], true) ? null : '501 5.5.4 syntax: BODY=7BIT or BODY=8BITMIME',
                        default => "555 5.5.4 MAIL parameter {$key} not recognized",
                    };
                    if ($bad !== null) {
                        return $this->say($bad);
                    }
                }

                return $this->say('250 2.1.0 OK', $tx->withSender($m[1]));

            case 'RCPT':
                if ($tx->sender === null) {
                    return $this->say('503 5.5.1 need MAIL before RCPT');
                }
                if (preg_match('/^TO: ?' . self::PATH . '\z/i', $arg, $m) !== 1 || $m[1] === '' || strlen($m[1]) > self::MAX_PATH) {
                    return $this->say('501 5.5.4 syntax: RCPT TO:<address>');
                }
                if (count($tx->recipients) >= self::MAX_RECIPIENTS) {
                    return $this->say('452 4.5.3 too many recipients');
                }

                return $this->say('250 2.1.5 OK', $tx->withRecipient($m[1]));

            case 'DATA':
                if ($arg !== '') {
                    return $this->say('501 5.5.4 syntax: DATA');
                }
                if ($tx->sender === null) {
                    return $this->say('503 5.5.1 need MAIL before DATA');
                }
                if ($tx->recipients === []) {
                    return $this->say('503 5.5.1 need RCPT before DATA');
                }
                $header = "Return-Path: <{$tx->sender}>\r\n";
                foreach ($tx->recipients as $recipient) {
                    $header .= "Delivered-To: <{$recipient}>\r\n";
                }

                return $this->say('354 end data with <CR><LF>.<CR><LF>', $tx->inData($this->maildir->spool($header)));

            case 'RSET':
                return $arg === '' ? $this->say('250 2.0.0 OK', $tx->reset()) : $this->say('501 5.5.4 syntax: RSET');

            case 'NOOP':
                return $this->say('250 2.0.0 OK');

            case 'VRFY':
                return $this->say('252 2.1.5 cannot VRFY; send some mail and see');

            case 'QUIT':
                return $arg === ''
                    ? new Reply("221 2.0.0 {$this->hostname} closing connection\r\n", TcpResponse::RespondClose, null)
                    : $this->say('501 5.5.4 syntax: QUIT');

            default:
                return $this->say('500 5.5.2 command not recognized');
        }
    }

    /** AUTH <mechanism> [initial-response] (RFC 4954), on submission servers over TLS only. */
    private function auth(string $arg, Transaction $tx, bool $tls): Reply
    {
        if ($this->users === null) {
            return $this->say('502 5.5.1 AUTH not offered here');
        }
        if (!$tls) {
            return $this->say('538 5.7.11 Encryption required for requested authentication mechanism');
        }
        if ($tx->helo === '') {
            return $this->say('503 5.5.1 send EHLO first');
        }
        if ($tx->user !== '') {
            return $this->say('503 5.5.1 already authenticated');
        }
        if ($tx->sender !== null) {
            return $this->say('503 5.5.1 AUTH not allowed during a mail transaction');
        }
        [$mechanism, $initial] = explode(' ', $arg, 2) + [1 => null];

        return match (strtoupper($mechanism)) {
            'PLAIN' => $initial === null
                ? $this->say('334 ', $tx->authenticating(Phase::AuthPlain))
                : $this->plain($initial === '=' ? '' : $initial, $tx),
            'LOGIN' => $initial === null
                ? $this->say('334 VXNlcm5hbWU6', $tx->authenticating(Phase::AuthLoginUser))
                : $this->loginUser($initial, $tx),
            default => $this->say('504 5.5.4 unrecognized authentication type'),
        };
    }

    /** The client's answer to a 334 challenge. */
    private function authStep(string $line, Transaction $tx): Reply
    {
        $line = str_ends_with($line, "\r\n") ? substr($line, 0, -2) : $line;
        if ($line === '*') {
            return $this->say('501 5.7.0 authentication cancelled', $tx->authenticated(''));
        }

        return match ($tx->phase) {
            Phase::AuthPlain => $this->plain($line, $tx),
            Phase::AuthLoginUser => $this->loginUser($line, $tx),
            default => $this->check($tx->loginUser, base64_decode($line, true), $tx),
        };
    }

    /** AUTH PLAIN credentials: base64 of authzid NUL authcid NUL password (RFC 4616). */
    private function plain(string $base64, Transaction $tx): Reply
    {
        $parts = explode("\0", (string) base64_decode($base64, true));
        if (count($parts) !== 3 || ($parts[0] !== '' && $parts[0] !== $parts[1])) {
            return $this->say('535 5.7.8 Authentication credentials invalid', $tx->authenticated(''));
        }

        return $this->check($parts[1], $parts[2], $tx);
    }

    private function loginUser(string $base64, Transaction $tx): Reply
    {
        $user = base64_decode($base64, true);
        if ($user === false || $user === '' || strlen($user) > self::MAX_PATH) {
            return $this->say('501 5.5.2 cannot decode the user name', $tx->authenticated(''));
        }

        return $this->say('334 UGFzc3dvcmQ6', $tx->authenticating(Phase::AuthLoginPassword, $user));
    }

    private function check(string $user, string|false $password, Transaction $tx): Reply
    {
        if ($password !== false && $user !== '' && $this->users?->verify($user, $password) === true) {
            return $this->say('235 2.7.0 Authentication successful', $tx->authenticated($user));
        }

        return $this->say('535 5.7.8 Authentication credentials invalid', $tx->authenticated(''));
    }

    /** A line of message text: the lone "." ends it; otherwise unstuff a leading dot and spool it. */
    private function text(string $line, Transaction $tx): Reply
    {
        if ($line === ".\r\n") {
            if ($tx->tooBig) {
                $this->maildir->discard($tx->spool);

                return $this->say('552 5.3.4 message size exceeds fixed maximum message size', $tx->reset());
            }
            $id = $this->maildir->deliver($tx->spool);

            return $this->say("250 2.0.0 OK: queued as {$id}", $tx->reset());
        }

        if (str_starts_with($line, '.')) {
            $line = substr($line, 1); // RFC 5321 §4.5.2: the client doubled a leading dot
        }
        // Past the limit, keep reading to the "." as the protocol demands, but stop storing.
        $tooBig = $tx->tooBig || $tx->size + strlen($line) > $this->maxSize;
        if (!$tooBig) {
            $this->maildir->append($tx->spool, $line);
        }

        return new Reply('', TcpResponse::Read, $tx->received(strlen($line), $tooBig));
    }

    private function say(string $text, ?Transaction $transaction = null): Reply
    {
        return new Reply("{$text}\r\n", TcpResponse::Respond, $transaction);
    }
}
