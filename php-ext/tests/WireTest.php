<?php

declare(strict_types=1);

namespace Pier\Ext\Tests;

use Pier\Ext\Tests\Support\Child;
use Pier\Ext\Tests\Support\Frames;
use PHPUnit\Framework\TestCase;

/**
 * A real worker process (tests/workers/scripted.php) with the extension, driven through pipes: what it
 * receives becomes the right TcpRequest, and what it writes is byte-identical to the reference frames.
 */
final class WireTest extends TestCase
{
    private static function request(string $event, string $body, string $state = ''): array
    {
        return [
            'remote_addr' => '127.0.0.1:50412',
            'event' => $event,
            'body' => bin2hex($body),
            'uuid' => Frames::UUID,
            'server' => 'smtp',
            'state' => bin2hex($state),
            'getters_agree' => true,
        ];
    }

    private static function assertCleanExit(Child $run): void
    {
        self::assertSame(0, $run->exitCode, "worker exit code; stderr:\n" . $run->stderr);
        self::assertSame(['end' => true], end($run->steps), 'the worker ran to its end');
    }

    public function testEveryServerVectorBecomesTheRightRequestAndTheHandshakeIsAnswered(): void
    {
        $run = Child::run(
            'scripted.php',
            [['wait'], ['read'], ['wait'], ['read'], ['wait'], ['close'], ['wait']],
            Frames::vector('server_pid_request') . Frames::vector('server_event_connected')
                . Frames::vector('server_event_data') . Frames::vector('server_event_close') . Frames::vector('server_stop'),
        );

        self::assertCleanExit($run);
        self::assertSame([
            self::request('CONNECTED', ''), ['done' => 'read'],
            self::request('DATA', "EHLO example.org\r\n"), ['done' => 'read'],
            self::request('CLOSE', ''), ['done' => 'close'],
            ['request' => null], ['end' => true],
        ], $run->steps);
        $frames = $run->frames();
        self::assertCount(4, $frames);
        $pid = Frames::split($frames[0])[0];
        self::assertSame(0x01, $pid['flags'], 'the pid reply is a CONTROL frame');
        self::assertMatchesRegularExpression('/^\{"pid":[1-9][0-9]*\}$/', $pid['payload']);
        self::assertSame(Frames::encode(0x01, [], $pid['payload']), $frames[0], 'same shape as worker_pid_reply_example');
        self::assertSame(
            [Frames::vector('worker_read_continue'), Frames::vector('worker_read_continue'), Frames::vector('worker_close')],
            \array_slice($frames, 1),
        );
    }

    /**
     * The extension keeps each connection's context and its strings between events: connections
     * whose uuids end alike, a connection coming back under another server name, and one whose
     * uuid returns after its CLOSE each still get exactly their own remote address, uuid and server.
     */
    public function testEachConnectionGetsItsOwnStringsAcrossInterleavedEvents(): void
    {
        $tail = '-4d2c-9a51-0e6f3b2a7c10';
        $events = [
            ['CONNECTED', '10.0.0.1:1001', "aaaaaaaa-4b7e$tail", 'smtp'],
            ['CONNECTED', '10.0.0.2:1002', "bbbbbbbb-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.1:1001', "aaaaaaaa-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.2:1002', "bbbbbbbb-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.1:1001', "aaaaaaaa-4b7e$tail", 'imap'],
            ['CLOSE', '10.0.0.2:1002', "bbbbbbbb-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.3:1003', "bbbbbbbb-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.1:1001', "aaaaaaaa-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.9:1009', "aaaaaaaa-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.9:1009', "aaaaaaaa-4b7e$tail", 'smtp'],
            ['DATA', '10.0.0.9:1009', "cccccccc-4b7e$tail", 'smtp'],
        ];
        $input = '';
        $script = [];
        $want = [];
        foreach ($events as $i => [$event, $addr, $uuid, $server]) {
            $input .= Frames::event($event, "line $i\n", '', $server, $addr, $uuid);
            $script[] = ['wait'];
            $script[] = ['read'];
            $want[] = ['remote_addr' => $addr, 'uuid' => $uuid, 'server' => $server, 'body' => bin2hex("line $i\n")];
            $want[] = ['done' => 'read'];
        }
        $script[] = ['wait'];
        $run = Child::run('scripted.php', $script, $input);

        self::assertCleanExit($run);
        $got = [];
        foreach (\array_slice($run->steps, 0, -2) as $step) {
            $got[] = isset($step['uuid'])
                ? ['remote_addr' => $step['remote_addr'], 'uuid' => $step['uuid'], 'server' => $step['server'], 'body' => $step['body']]
                : $step;
        }
        self::assertSame($want, $got);
    }

    public function testEveryReplyIsByteIdenticalToTheReferenceWorker(): void
    {
        $steps = [
            ['respond', bin2hex("hello\r\n")],
            ['respond', bin2hex("goodbye\r\n"), 'RespondClose'],
            ['read'],
            ['close'],
            ['error', bin2hex('boom')],
            ['stop'],
            ['respond', bin2hex("\x00\xff\r\n")],
        ];
        $script = [];
        foreach ($steps as $step) {
            $script[] = ['wait'];
            $script[] = $step;
        }
        $run = Child::run('scripted.php', $script, str_repeat(Frames::vector('server_event_data'), \count($steps)));

        self::assertCleanExit($run);
        self::assertSame(
            array_map(Frames::vector(...), [
                'worker_respond_write_hello',
                'worker_respond_writeclose_bye',
                'worker_read_continue',
                'worker_close',
                'worker_error',
                'worker_stop',
                'worker_respond_binary',
            ]),
            $run->frames(),
        );
    }

    public function testTheStopRequestEndsTheLoopForGoodAndNothingIsSentAfterIt(): void
    {
        $run = Child::run(
            'scripted.php',
            [['wait'], ['respond', bin2hex("hello\r\n")], ['wait'], ['wait']],
            Frames::vector('server_event_connected') . Frames::vector('server_stop') . Frames::vector('server_event_data'),
        );

        self::assertCleanExit($run);
        self::assertSame([self::request('CONNECTED', ''), ['done' => 'respond'], ['request' => null], ['request' => null], ['end' => true]], $run->steps);
        self::assertSame(Frames::vector('worker_respond_write_hello'), $run->stdout, 'no stray CLOSE after the stop request');
    }

    public function testCleanEndOfTheRelayIsNull(): void
    {
        $run = Child::run('scripted.php', [['wait'], ['read'], ['wait']], Frames::vector('server_event_connected'));

        self::assertCleanExit($run);
        self::assertSame([self::request('CONNECTED', ''), ['done' => 'read'], ['request' => null], ['end' => true]], $run->steps);
    }

    public function testTheRelayClosingInsideAFrameIsARelayException(): void
    {
        $event = Frames::vector('server_event_data');
        $run = Child::run('scripted.php', [['wait']], substr($event, 0, -3));

        self::assertCleanExit($run);
        self::assertSame('Pier\Exception\RelayException', $run->steps[0]['exception'] ?? null);
        self::assertStringContainsString('closed after ' . (\strlen($event) - 3) . ' bytes of an incomplete frame', $run->steps[0]['message']);
    }

    public function testACorruptFrameIsAProtocolException(): void
    {
        $run = Child::run('scripted.php', [['wait']], "HELO not a frame\r\n");

        self::assertCleanExit($run);
        self::assertSame('Pier\Exception\ProtocolException', $run->steps[0]['exception'] ?? null);
        self::assertStringContainsString('unsupported version', $run->steps[0]['message']);
        self::assertSame('', $run->stdout);
    }

    public function testAnUnknownEventNameIsUnknown(): void
    {
        $run = Child::run('scripted.php', [['wait'], ['close']], Frames::event('RESET', 'x'));

        self::assertCleanExit($run);
        self::assertSame(self::request('UNKNOWN', 'x'), $run->steps[0]);
    }

    public function testAnswerDiscipline(): void
    {
        $run = Child::run(
            'scripted.php',
            [['read'], ['wait'], ['wait'], ['respond', '6869'], ['close'], ['wait'], ['error', '78'], ['read'], ['stop']],
            Frames::vector('server_event_data') . Frames::vector('server_event_close'),
        );

        self::assertCleanExit($run);
        $protocol = 'Pier\Exception\ProtocolException';
        self::assertSame(['exception' => $protocol, 'message' => 'could not answer: answering before any request (call waitRequest() first)'], $run->steps[0]);
        self::assertSame($protocol, $run->steps[2]['exception'], 'waiting again before answering');
        self::assertStringContainsString('has no answer yet', $run->steps[2]['message']);
        self::assertSame(['done' => 'respond'], $run->steps[3]);
        self::assertSame(['exception' => $protocol, 'message' => 'could not answer: answering twice (the request was already answered)'], $run->steps[4]);
        self::assertSame(['done' => 'error'], $run->steps[6]);
        self::assertSame($protocol, $run->steps[7]['exception'], 'error() answered the request');
        self::assertSame(['done' => 'stop'], $run->steps[8], 'stop() is always sent');
        self::assertSame(
            [Frames::reply('WRITE', 'hi'), Frames::encode(0x40, [], 'x'), Frames::vector('worker_stop')],
            $run->frames(),
        );
    }

    public function testStrayOutputGoesToStderrAndNeverCorruptsThePipe(): void
    {
        $run = Child::run('scripted.php', [['wait'], ['stray'], ['respond', bin2hex("ok\r\n")], ['wait']], Frames::vector('server_event_data'));

        self::assertCleanExit($run);
        self::assertSame(Frames::reply('WRITE', "ok\r\n"), $run->stdout);
        foreach (['stray echo', 'stray print', 'stray var_dump', 'stray printf', 'stray fwrite', 'stray child process'] as $text) {
            self::assertStringContainsString($text, $run->stderr);
        }
    }

    public function testBinaryAndMultiMegabyteBodiesRoundTrip(): void
    {
        $bodies = ["\x00", "\xff\xfe\x00\r\n", random_bytes(3 << 20) . "\r\n", str_repeat("\x80\x00", 70000)];
        $input = '';
        foreach ($bodies as $body) {
            $input .= Frames::event('DATA', $body);
        }
        $run = Child::run('scripted.php', [['echo']], $input);

        self::assertCleanExit($run);
        self::assertSame(['echoed' => 4, 'digest' => sha1(implode('', array_map('sha1', $bodies)))], $run->steps[0]);
        self::assertSame(array_map(static fn (string $b): string => Frames::reply('WRITE', $b), $bodies), $run->frames());
    }

    /**
     * `$request = $tcp->waitRequest()` with the previous request kept in an array, weakly
     * referenced, passed to a call, cloned, or held by the variable alone: each request holds what
     * it came with until the end (the extension refills a request object only when nothing but the
     * variable being assigned holds it), and a weakly referenced one is gone at the next.
     */
    public function testEveryRequestKeepsWhatItCameWithWhoeverHoldsIt(): void
    {
        $input = '';
        $want = [];
        for ($i = 0; $i < 13; ++$i) {
            [$event, $state] = [['CONNECTED', ''], ['DATA', "s$i"], ['DATA', ''], ['CLOSE', '']][$i % 4];
            $body = $event === 'DATA' ? "line $i\r\n" : '';
            $uuid = sprintf('%08d-4b7e-4d2c-9a51-0e6f3b2a7c10', intdiv($i, 4));
            $input .= Frames::event($event, $body, $state, 'smtp', "10.0.0.$i:100$i", $uuid);
            $want[] = [
                'remote_addr' => "10.0.0.$i:100$i",
                'event' => $event,
                'body' => bin2hex($body),
                'uuid' => $uuid,
                'server' => 'smtp',
                'state' => bin2hex($state),
                'getters_agree' => true,
            ];
        }
        $run = Child::run('scripted.php', [['hold']], $input);

        self::assertCleanExit($run);
        self::assertSame([
            'came' => $want,
            'kept' => [$want[0], $want[3], $want[5], $want[8], $want[10]],
            'weak_gone' => [true, true, true],
        ], $run->steps[0]);
    }

    /**
     * The extension writes a body over the previous request's body string when only that request
     * held it and it fits: kept bodies stay what they were, a body whose hash a lookup cached is
     * found under its new bytes, and every answer carries its own body, whatever the lengths.
     */
    public function testEveryBodyIsItsOwnWhoeverHoldsThePreviousOne(): void
    {
        $bodies = [
            "line A\r\n", "line B\r\n", "line C\r\n", "line D\r\n", "a longer line E\r\n", "F\r\n",
            "line G\r\n", str_repeat('h', 200) . "\r\n", "line I\r\n", "line J\r\n", "\x00", "line K\r\n",
            "line B\r\n", "line L\r\n",
        ];
        $input = '';
        foreach ($bodies as $body) {
            $input .= Frames::event('DATA', $body);
        }
        $run = Child::run('scripted.php', [['bodies', bin2hex("line B\r\n")]], $input);

        self::assertCleanExit($run);
        self::assertSame([
            'came' => array_map('bin2hex', $bodies),
            'found' => array_map(static fn (string $b): bool => $b === "line B\r\n", $bodies),
            'kept' => array_map('bin2hex', array_values(array_filter($bodies, static fn (int $i): bool => $i % 3 === 0, ARRAY_FILTER_USE_KEY))),
        ], $run->steps[0]);
        self::assertSame(array_map(static fn (string $b): string => Frames::reply('WRITE', $b), $bodies), $run->frames());
    }

    public function testStateRoundTripsUnderAPierServer(): void
    {
        $state = "\x00state\xff";
        $run = Child::run(
            'scripted.php',
            [['wait'], ['setState', bin2hex('ignored')], ['setState', bin2hex($state)], ['respond', '6f6b'], ['wait'], ['setState', ''], ['read'], ['wait'], ['close']],
            Frames::event('CONNECTED', '') . Frames::event('DATA', "x\r\n", $state) . Frames::event('CLOSE', ''),
            ['PIER_FEATURES' => 'state'],
        );

        self::assertCleanExit($run);
        self::assertSame(self::request('DATA', "x\r\n", $state), $run->steps[4]);
        self::assertSame(
            [Frames::reply('WRITE', 'ok', $state), Frames::reply('CONTINUE', '', ''), Frames::vector('worker_close')],
            $run->frames(),
            'the last setState wins; an empty state clears (option 1 = 0); no setState, one option',
        );
    }

    public function testStateWithoutTheFeatureIsAProtocolExceptionAndSendsNothing(): void
    {
        $run = Child::run('scripted.php', [['wait'], ['setState', '6869'], ['read']], Frames::vector('server_event_data'), ['PIER_FEATURES' => 'other']);

        self::assertCleanExit($run);
        self::assertSame(
            ['exception' => 'Pier\Exception\ProtocolException', 'message' => "connection state needs a Pier server (PIER_FEATURES has no 'state')"],
            $run->steps[1],
        );
        self::assertSame(Frames::vector('worker_read_continue'), $run->stdout);
    }

    public function testAWriteToAClosedRelayIsARelayException(): void
    {
        $report = (string) tempnam(sys_get_temp_dir(), 'pier-ext-report-');
        $proc = proc_open(
            [PHP_BINARY, __DIR__ . '/workers/broken-pipe.php'],
            [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']],
            $pipes,
            null,
            array_merge(getenv(), ['PIER_TEST_REPORT' => $report]),
        );
        self::assertIsResource($proc);
        // The reading end of the relay is gone before the worker gets its event.
        fclose($pipes[1]);
        fwrite($pipes[0], Frames::vector('server_event_data'));
        fclose($pipes[0]);
        $stderr = stream_get_contents($pipes[2]);
        fclose($pipes[2]);
        $exit = proc_close($proc);
        $said = json_decode((string) file_get_contents($report), true);
        unlink($report);

        self::assertSame(0, $exit, (string) $stderr);
        self::assertSame('Pier\Exception\RelayException', $said['exception'] ?? null);
        self::assertStringContainsString('could not write a frame of', $said['message']);
        self::assertStringContainsString('Broken pipe', $said['message']);
    }
}
