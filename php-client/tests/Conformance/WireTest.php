<?php

declare(strict_types=1);

namespace Pier\Tests\Conformance;

use PHPUnit\Framework\TestCase;
use Pier\Tests\Vectors;

/**
 * The wire, through real pipes to a real worker process: every server vector becomes the right request,
 * every answer is byte-identical to the reference worker's, and the edges (handshake, stop, end of relay,
 * state, stray output, misuse) behave the same in both implementations.
 */
final class WireTest extends TestCase
{
    private const EXCEPTION = 'Pier\Exception\\';

    /**
     * @return array<string, string> the request the fixture reports for a server_event_* vector
     */
    private static function request(string $event, string $body, string $state = ''): array
    {
        return [
            'remote_addr' => Vectors::REMOTE_ADDR,
            'event' => $event,
            'body' => bin2hex($body),
            'uuid' => Vectors::UUID,
            'server' => Vectors::SERVER,
            'state' => bin2hex($state),
            'same_properties' => true,
        ];
    }

    private static function assertCleanExit(WorkerRun $run): void
    {
        self::assertSame(Implementation::expected(), $run->implementation(), 'implementation of the child worker');
        self::assertSame(['end' => true], $run->report[\count($run->report) - 1] ?? null, "the worker did not finish its steps; stderr:\n{$run->stderr}");
        self::assertSame(0, $run->exitCode, $run->stderr);
    }

    /**
     * @return iterable<string, array{string, string, string}>
     */
    public static function serverEvents(): iterable
    {
        yield from Vectors::events();
    }

    /**
     * @dataProvider serverEvents
     */
    public function testEachServerEventVectorBecomesItsRequest(string $vector, string $event, string $body): void
    {
        $run = WorkerProcess::run([['wait'], ['read']], Vectors::bytes($vector));

        self::assertCleanExit($run);
        self::assertSame([self::request($event, $body), ['done' => 'read']], \array_slice($run->steps(), 0, 2));
        self::assertSame(Vectors::bytes('worker_read_continue'), $run->stdout);
    }

    /**
     * @return iterable<string, array{list<string>, string}>
     */
    public static function answers(): iterable
    {
        yield 'respond' => [['respond', bin2hex("hello\r\n")], 'worker_respond_write_hello'];
        yield 'respond close' => [['respond', bin2hex("goodbye\r\n"), 'WRITECLOSE'], 'worker_respond_writeclose_bye'];
        yield 'read' => [['read'], 'worker_read_continue'];
        yield 'close' => [['close'], 'worker_close'];
        yield 'error' => [['error', bin2hex('boom')], 'worker_error'];
        yield 'stop' => [['stop'], 'worker_stop'];
        yield 'binary' => [['respond', '00ff0d0a'], 'worker_respond_binary'];
    }

    /**
     * @dataProvider answers
     *
     * @param list<string> $answer
     */
    public function testEachAnswerIsByteIdenticalToTheReferenceWorker(array $answer, string $vector): void
    {
        $run = WorkerProcess::run([['wait'], $answer, ['wait']], Vectors::bytes('server_event_data'));

        self::assertCleanExit($run);
        self::assertSame(Vectors::bytes($vector), $run->stdout);
        self::assertSame(['request' => null], $run->steps()[2], 'end of the relay after the answer ends the loop');
    }

    public function testTheHandshakeIsAnsweredWithTheWorkersPidAndEachAnswerGoesOutBeforeTheNextEvent(): void
    {
        $worker = new WorkerProcess([['wait'], ['respond', bin2hex("hello\r\n")], ['wait'], ['close'], ['wait']]);

        $worker->send(Vectors::bytes('server_pid_request'));
        $pid = '{"pid":' . $worker->pid . '}';
        self::assertSame(Vectors::frame(0x01, [], $pid), $worker->receive(12 + \strlen($pid)));

        // One frame at a time, each answer read before the next event is written: a worker that waited
        // for more input than one frame would hang here.
        $worker->send(Vectors::bytes('server_event_connected'));
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $worker->receive(\strlen(Vectors::bytes('worker_respond_write_hello'))));
        $worker->send(Vectors::bytes('server_pid_request') . Vectors::bytes('server_event_close'));
        self::assertSame(Vectors::frame(0x01, [], $pid), $worker->receive(12 + \strlen($pid)));
        self::assertSame(Vectors::bytes('worker_close'), $worker->receive(\strlen(Vectors::bytes('worker_close'))));
        $run = $worker->finish();

        self::assertCleanExit($run);
        self::assertSame('', $run->stdout, 'nothing after the last answer');
        self::assertSame(
            [self::request('CONNECTED', ''), ['done' => 'respond'], self::request('CLOSE', ''), ['done' => 'close'], ['request' => null]],
            $run->steps(),
        );
    }

    public function testTheStopRequestEndsTheLoopAndNothingIsSentAfterIt(): void
    {
        $run = WorkerProcess::run(
            [['wait'], ['read'], ['wait'], ['wait']],
            Vectors::bytes('server_event_connected') . Vectors::bytes('server_stop') . Vectors::bytes('server_event_data'),
        );

        self::assertCleanExit($run);
        self::assertSame([self::request('CONNECTED', ''), ['done' => 'read'], ['request' => null], ['request' => null]], $run->steps());
        self::assertSame(Vectors::bytes('worker_read_continue'), $run->stdout, 'no stray CLOSE after the stop request');
    }

    public function testBinaryBodiesLargerThanAPipeBufferRoundTrip(): void
    {
        $body = str_repeat("\x00\xff\r\n\x80", 60000) . "\r\n";

        $run = WorkerProcess::run([['wait'], ['echo-body']], Vectors::event('DATA', $body));

        self::assertCleanExit($run);
        self::assertSame(bin2hex($body), $run->steps()[0]['body'] ?? null);
        self::assertSame(Vectors::frame(0, [5], 'WRITE' . $body), $run->stdout);
    }

    public function testStrayOutputGoesToStderrAndNeverCorruptsThePipe(): void
    {
        $run = WorkerProcess::run(
            [['wait'], ['echo', bin2hex("stray\n")], ['respond', bin2hex("hello\r\n")]],
            Vectors::bytes('server_event_data'),
        );

        self::assertCleanExit($run);
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $run->stdout);
        self::assertSame(3, substr_count($run->stderr, "stray\n"), $run->stderr);
    }

    /**
     * The documented difference (php-client/README.md): only the extension owns fd 1, so only it keeps a
     * direct fwrite(STDOUT) off the relay; the package cannot see such writes.
     */
    public function testDirectWritesToStdoutAreCaughtOnlyByTheExtension(): void
    {
        $run = WorkerProcess::run(
            [['wait'], ['stdout', bin2hex("direct\n")], ['respond', bin2hex("hello\r\n")]],
            Vectors::bytes('server_event_data'),
        );

        self::assertCleanExit($run);
        if (Implementation::expected() === 'extension') {
            self::assertSame(Vectors::bytes('worker_respond_write_hello'), $run->stdout);
            self::assertStringContainsString("direct\n", $run->stderr);
        } else {
            self::assertSame("direct\n" . Vectors::bytes('worker_respond_write_hello'), $run->stdout);
        }
    }

    public function testAnsweringBeforeAnyRequestOrTwiceIsAProtocolException(): void
    {
        $run = WorkerProcess::run(
            [['respond', '78'], ['read'], ['close'], ['wait'], ['respond', bin2hex("hello\r\n")], ['respond', '78'], ['read'], ['close']],
            Vectors::bytes('server_event_data'),
        );

        self::assertCleanExit($run);
        $steps = $run->steps();
        foreach ([0, 1, 2] as $i) {
            self::assertSame(self::EXCEPTION . 'ProtocolException', $steps[$i]['exception'] ?? null, "step {$i}");
            self::assertStringContainsString('answering before any request', (string) $steps[$i]['message']);
        }
        foreach ([5, 6, 7] as $i) {
            self::assertSame(self::EXCEPTION . 'ProtocolException', $steps[$i]['exception'] ?? null, "step {$i}");
            self::assertStringContainsString('answering twice', (string) $steps[$i]['message']);
        }
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $run->stdout, 'a refused answer sends nothing');
    }

    public function testErrorAndStopAreAlwaysSentAndAnswerThePendingRequest(): void
    {
        $run = WorkerProcess::run(
            [['error', bin2hex('boom')], ['wait'], ['stop'], ['read']],
            Vectors::bytes('server_event_data'),
        );

        self::assertCleanExit($run);
        self::assertSame(Vectors::bytes('worker_error') . Vectors::bytes('worker_stop'), $run->stdout);
        self::assertSame(self::EXCEPTION . 'ProtocolException', $run->steps()[3]['exception'] ?? null);
    }

    public function testTheRelayClosingInsideAFrameIsARelayException(): void
    {
        $run = WorkerProcess::run([['wait']], substr(Vectors::bytes('server_event_data'), 0, -3));

        self::assertCleanExit($run);
        self::assertSame(self::EXCEPTION . 'RelayException', $run->steps()[0]['exception'] ?? null);
        self::assertSame('', $run->stdout);
    }

    public function testACorruptFrameIsAProtocolException(): void
    {
        $run = WorkerProcess::run([['wait']], substr_replace(Vectors::bytes('server_event_data'), "\xee", 6, 1));

        self::assertCleanExit($run);
        self::assertSame(self::EXCEPTION . 'ProtocolException', $run->steps()[0]['exception'] ?? null);
    }

    public function testAnUnknownEventNameIsUnknown(): void
    {
        $run = WorkerProcess::run([['wait'], ['close']], Vectors::event('RESET', "x\r\n"));

        self::assertCleanExit($run);
        self::assertSame('UNKNOWN', $run->steps()[0]['event'] ?? null);
        self::assertSame(Vectors::bytes('worker_close'), $run->stdout);
    }

    public function testStateRoundTripsUnderAPierServer(): void
    {
        $state = "\x00auth=alice\xff\r\n";
        $run = WorkerProcess::run(
            [['wait'], ['state', bin2hex($state)], ['respond', bin2hex("250 ok\r\n")], ['wait'], ['state', ''], ['read'], ['wait'], ['close']],
            Vectors::event('DATA', "AUTH\r\n") . Vectors::event('DATA', "MAIL\r\n", $state) . Vectors::event('CLOSE', ''),
            ['PIER_FEATURES' => 'state'],
        );

        self::assertCleanExit($run);
        $steps = $run->steps();
        self::assertSame([self::request('DATA', "AUTH\r\n"), self::request('DATA', "MAIL\r\n", $state), self::request('CLOSE', '')], [$steps[0], $steps[3], $steps[6]]);
        self::assertSame(
            Vectors::frame(0, [5, \strlen($state)], 'WRITE' . $state . "250 ok\r\n") . Vectors::frame(0, [8, 0], 'CONTINUE') . Vectors::bytes('worker_close'),
            $run->stdout,
        );
    }

    public function testStateUnderAServerWithoutTheFeatureIsAProtocolExceptionAndSendsNothing(): void
    {
        $run = WorkerProcess::run(
            [['wait'], ['state', '73'], ['respond', bin2hex("hello\r\n")]],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'something-else'],
        );

        self::assertCleanExit($run);
        self::assertSame(
            ['exception' => self::EXCEPTION . 'ProtocolException', 'message' => "connection state needs a Pier server (PIER_FEATURES has no 'state')"],
            $run->steps()[1],
        );
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $run->stdout);
    }

    /**
     * A command frame (PROTOCOL.md, "commands"): flags CODEC_JSON, option = header length, header ‖ data.
     */
    private static function command(string $header, string $data = ''): string
    {
        return Vectors::frame(0x08, [\strlen($header)], $header . $data);
    }

    public function testPushCommandsGoOutInOrderBeforeTheAnswer(): void
    {
        $other = '6ba7b810-9dad-41d1-80b4-00c04fd430c8';
        $run = WorkerProcess::run(
            [
                ['wait'],
                ['send', bin2hex($other), bin2hex("\x00hi\xff\r\n")],
                ['join', bin2hex('room/é')],
                ['leave', bin2hex('room/é'), bin2hex($other)],
                ['broadcast', bin2hex("all\r\n")],
                ['broadcast', bin2hex("room\r\n"), bin2hex('room/é'), [$other, Vectors::UUID]],
                ['disconnect', bin2hex($other)],
                ['respond', bin2hex("hello\r\n")],
            ],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'state,push'],
        );

        self::assertCleanExit($run);
        self::assertSame(['send', 'join', 'leave', 'broadcast', 'broadcast', 'disconnect', 'respond'], array_column(\array_slice($run->steps(), 1), 'done'));
        $uuid = Vectors::UUID;
        self::assertSame(
            self::command("{\"op\":\"send\",\"uuid\":\"{$other}\"}", "\x00hi\xff\r\n")
            . self::command("{\"op\":\"join\",\"uuid\":\"{$uuid}\",\"group\":\"room/é\"}")
            . self::command("{\"op\":\"leave\",\"uuid\":\"{$other}\",\"group\":\"room/é\"}")
            . self::command('{"op":"broadcast","server":"' . Vectors::SERVER . '"}', "all\r\n")
            . self::command("{\"op\":\"broadcast\",\"group\":\"room/é\",\"except\":[\"{$other}\",\"{$uuid}\"]}", "room\r\n")
            . self::command("{\"op\":\"close\",\"uuid\":\"{$other}\"}")
            . Vectors::bytes('worker_respond_write_hello'),
            $run->stdout,
        );
    }

    public function testIdleTimeoutCommandsGoOutBeforeTheAnswer(): void
    {
        $run = WorkerProcess::run(
            [['wait'], ['idle', bin2hex('90000')], ['idle', bin2hex('0')], ['idle'], ['respond', bin2hex("hello\r\n")]],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'state,idle_timeout'],
        );

        self::assertCleanExit($run);
        self::assertSame(['idle', 'idle', 'idle', 'respond'], array_column(\array_slice($run->steps(), 1), 'done'));
        self::assertSame(
            self::command('{"op":"idle_timeout","ms":90000}')
            . self::command('{"op":"idle_timeout","ms":0}')
            . self::command('{"op":"idle_timeout","ms":null}')
            . Vectors::bytes('worker_respond_write_hello'),
            $run->stdout,
        );
    }

    public function testIdleTimeoutWithoutTheFeatureOutsideARequestOrOutOfRangeIsRefusedAndSendsNothing(): void
    {
        $protocol = static fn (string $message): array => ['exception' => self::EXCEPTION . 'ProtocolException', 'message' => $message];
        $without = WorkerProcess::run(
            [['wait'], ['idle', bin2hex('1000')], ['respond', bin2hex("hello\r\n")]],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'state,push'],
        );
        self::assertCleanExit($without);
        self::assertSame(
            [$protocol("a per-connection idle timeout needs a Pier server (PIER_FEATURES has no 'idle_timeout')"), ['done' => 'respond']],
            \array_slice($without->steps(), 1),
        );
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $without->stdout);

        $misuse = WorkerProcess::run(
            [['idle', bin2hex('5')], ['wait'], ['idle', bin2hex('-1')], ['idle', bin2hex('604800001')], ['idle', bin2hex('604800000')], ['read'], ['idle', bin2hex('5')]],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'idle_timeout'],
        );
        self::assertCleanExit($misuse);
        $steps = $misuse->steps();
        unset($steps[1]);
        self::assertSame([
            $protocol('could not set the idle timeout: no request is being handled (it is sent during a request, after waitRequest())'),
            $protocol("could not set the idle timeout: -1 ms is not between 0 and 604800000 (a week), or null for the server's"),
            $protocol("could not set the idle timeout: 604800001 ms is not between 0 and 604800000 (a week), or null for the server's"),
            ['done' => 'idle'],
            ['done' => 'read'],
            $protocol('could not set the idle timeout: the request was already answered (it is sent before the answer)'),
        ], array_values($steps));
        self::assertSame(self::command('{"op":"idle_timeout","ms":604800000}') . Vectors::bytes('worker_read_continue'), $misuse->stdout);
    }

    public function testPushUnderAServerWithoutTheFeatureIsAProtocolExceptionAndSendsNothing(): void
    {
        $run = WorkerProcess::run(
            [['wait'], ['send', '75', '78'], ['broadcast', '78'], ['join', '67'], ['leave', '67'], ['disconnect', '75'], ['respond', bin2hex("hello\r\n")]],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'state'],
        );

        self::assertCleanExit($run);
        $refused = ['exception' => self::EXCEPTION . 'ProtocolException', 'message' => "server push needs a Pier server (PIER_FEATURES has no 'push')"];
        self::assertSame([$refused, $refused, $refused, $refused, $refused, ['done' => 'respond']], \array_slice($run->steps(), 1));
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $run->stdout);
    }

    public function testPushOutsideARequestOrWithBadArgumentsIsRefusedWithTheSameMessages(): void
    {
        $run = WorkerProcess::run(
            [
                ['send', '75', '78'],
                ['wait'],
                ['join', ''],
                ['leave', bin2hex(str_repeat('g', 129))],
                ['broadcast', '78', 'ff'],
                ['send', '', '78'],
                ['disconnect', 'ff'],
                ['broadcast', '78', null, [42]],
                ['join', bin2hex(str_repeat('g', 128))],
                ['read'],
                ['broadcast', '78'],
            ],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'push'],
        );

        self::assertCleanExit($run);
        $protocol = static fn (string $message): array => ['exception' => self::EXCEPTION . 'ProtocolException', 'message' => $message];
        $steps = $run->steps();
        unset($steps[1]);
        self::assertSame([
            $protocol('could not send: no request is being handled (push commands go out during a request, after waitRequest())'),
            $protocol('could not join: a group name must be 1 to 128 bytes of UTF-8 (got 0 bytes)'),
            $protocol('could not leave: a group name must be 1 to 128 bytes of UTF-8 (got 129 bytes)'),
            $protocol('could not broadcast: a group name must be 1 to 128 bytes of UTF-8 (got 1 bytes)'),
            $protocol('could not send: a uuid must be a non-empty UTF-8 string'),
            $protocol('could not disconnect: a uuid must be a non-empty UTF-8 string'),
            $protocol('could not broadcast: $except must hold uuid strings only'),
            ['done' => 'join'],
            ['done' => 'read'],
            $protocol('could not broadcast: the request was already answered (push commands go out before the answer)'),
        ], array_values($steps));
        self::assertSame(
            self::command('{"op":"join","uuid":"' . Vectors::UUID . '","group":"' . str_repeat('g', 128) . '"}') . Vectors::bytes('worker_read_continue'),
            $run->stdout,
        );
    }

    public function testStartTlsSendsTheCommandBeforeTheAnswerAndTlsFactsReachTheRequest(): void
    {
        $tls = ['version' => 'TLSv1.3', 'cipher' => 'TLS13_AES_256_GCM_SHA384', 'sni' => 'mail.example', 'client_subject' => 'CN=alice, O=Example', 'client_sha256' => str_repeat('ab', 32)];
        $run = WorkerProcess::run(
            [['wait'], ['tls'], ['starttls'], ['respond', bin2hex("220 go ahead\r\n")], ['wait'], ['tls'], ['read'], ['wait'], ['tls'], ['read']],
            Vectors::event('DATA', "STARTTLS\r\n")
                . Vectors::event('DATA', "EHLO x\r\n", '', Vectors::UUID, $tls)
                . Vectors::event('DATA', "EHLO y\r\n", '', Vectors::UUID, ['version' => 'TLSv1.2', 'cipher' => 'c']),
            ['PIER_FEATURES' => 'state,starttls'],
        );

        self::assertCleanExit($run);
        $steps = $run->steps();
        self::assertSame(['tls' => null], $steps[1]);
        self::assertSame(['tls' => $tls], $steps[5]);
        self::assertSame(['tls' => ['version' => 'TLSv1.2', 'cipher' => 'c', 'sni' => null, 'client_subject' => null, 'client_sha256' => null]], $steps[8]);
        $header = '{"op":"starttls"}';
        self::assertSame(
            Vectors::frame(0x08, [\strlen($header)], $header) . Vectors::frame(0, [5], "WRITE220 go ahead\r\n") . Vectors::frame(0, [8], 'CONTINUE') . Vectors::frame(0, [8], 'CONTINUE'),
            $run->stdout,
        );
    }

    public function testStartTlsWithoutTheFeatureOrARequestIsAProtocolExceptionAndSendsNothing(): void
    {
        $run = WorkerProcess::run(
            [['starttls'], ['wait'], ['starttls'], ['respond', bin2hex("hello\r\n")], ['starttls']],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'state'],
        );

        self::assertCleanExit($run);
        $message = "STARTTLS needs a Pier server (PIER_FEATURES has no 'starttls')";
        $steps = $run->steps();
        foreach ([0, 2, 4] as $i) {
            self::assertSame(['exception' => self::EXCEPTION . 'ProtocolException', 'message' => $message], $steps[$i]);
        }
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $run->stdout);

        $run = WorkerProcess::run(
            [['starttls'], ['wait'], ['respond', bin2hex("hello\r\n")], ['starttls']],
            Vectors::bytes('server_event_data'),
            ['PIER_FEATURES' => 'starttls'],
        );
        self::assertCleanExit($run);
        $steps = $run->steps();
        self::assertSame(self::EXCEPTION . 'ProtocolException', $steps[0]['exception'] ?? null);
        self::assertStringContainsString('before any request', $steps[0]['message'] ?? '');
        self::assertSame(self::EXCEPTION . 'ProtocolException', $steps[3]['exception'] ?? null);
        self::assertStringContainsString('answering twice', $steps[3]['message'] ?? '');
        self::assertSame(Vectors::bytes('worker_respond_write_hello'), $run->stdout);
    }
}
