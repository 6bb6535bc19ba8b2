<?php

// A worker that runs the steps in PIER_TEST_STEPS (JSON) and writes what happened, one JSON line per
// step, to the file PIER_TEST_REPORT. Bytes travel hex-encoded. Steps:
//   ["wait"]                 waitRequest(): reports the request's fields (or null)
//   ["respond", hex, case?]  respond(body, TcpResponse::case)
//   ["read"] ["close"] ["stop"] ["error", hex] ["setState", hex]
//   ["stray"]                echo, print, var_dump, printf, fwrite(STDOUT) and a child process writing to fd 1
//   ["echo"]                 until waitRequest() returns null: respond with the body (reports count, sha1s)
//   ["hold"]                 until waitRequest() returns null, `$request = $tcp->waitRequest()` while the
//                            previous request is held in each way a script may hold it (reports what
//                            every request held when it came and at the end, and the weak references)
//   ["bodies", hex]          until waitRequest() returns null: respond with the body, look it up in an
//                            array whose one key is hex, keep every third body (the string alone);
//                            reports each body when it came, each lookup, and the kept bodies at the end
// A Pier\Exception\* thrown by a step is reported as {"exception": class, "message": …} and the script goes on.

declare(strict_types=1);

use Pier\Exception\PierException;
use Pier\Tcp\TcpRequest;
use Pier\Tcp\TcpResponse;
use Pier\Tcp\TcpWorker;

$report = (string) getenv('PIER_TEST_REPORT');
$say = static function (mixed $what) use ($report): void {
    file_put_contents($report, json_encode($what, JSON_THROW_ON_ERROR) . "\n", FILE_APPEND);
};
$describe = static function (?TcpRequest $r): array {
    if ($r === null) {
        return ['request' => null];
    }
    $props = [$r->remoteAddr, $r->event, $r->body, $r->connectionUuid, $r->server, $r->state];
    $getters = [$r->getRemoteAddress(), $r->getEvent(), $r->getBody(), $r->getConnectionUuid(), $r->getServer(), $r->getState()];

    return [
        'remote_addr' => $r->remoteAddr,
        'event' => $r->event->value,
        'body' => \strlen($r->body) > 4096 ? 'sha1:' . sha1($r->body) : bin2hex($r->body),
        'uuid' => $r->connectionUuid,
        'server' => $r->server,
        'state' => bin2hex($r->state),
        'getters_agree' => $props === $getters,
    ];
};

$tcp = TcpWorker::create();
foreach (json_decode((string) getenv('PIER_TEST_STEPS'), true, 512, JSON_THROW_ON_ERROR) as $step) {
    try {
        switch ($step[0]) {
            case 'wait':
                $say($describe($tcp->waitRequest()));
                break;
            case 'respond':
                $tcp->respond((string) hex2bin($step[1]), isset($step[2]) ? constant(TcpResponse::class . '::' . $step[2]) : TcpResponse::Respond);
                $say(['done' => 'respond']);
                break;
            case 'read':
            case 'close':
                $tcp->{$step[0]}();
                $say(['done' => $step[0]]);
                break;
            case 'stop':
                $tcp->getWorker()->stop();
                $say(['done' => 'stop']);
                break;
            case 'error':
                $tcp->getWorker()->error((string) hex2bin($step[1]));
                $say(['done' => 'error']);
                break;
            case 'setState':
                $tcp->setState((string) hex2bin($step[1]));
                $say(['done' => 'setState']);
                break;
            case 'stray':
                echo "stray echo\n";
                print "stray print\n";
                var_dump('stray var_dump');
                printf("stray %s\n", 'printf');
                fwrite(STDOUT, "stray fwrite\n");
                passthru('echo stray child process');
                $say(['done' => 'stray']);
                break;
            case 'echo':
                $count = 0;
                $bodies = '';
                while (($request = $tcp->waitRequest()) !== null) {
                    $tcp->respond($request->body);
                    $bodies .= sha1($request->body);
                    ++$count;
                }
                $say(['echoed' => $count, 'digest' => sha1($bodies)]);
                break;
            case 'hold':
                // The extension may fill the previous request object again when nothing else can
                // see it: every request must keep what it came with, whoever holds it.
                $came = [];
                $kept = [];
                $weakGone = [];
                $weak = null;
                $i = 0;
                while (($request = $tcp->waitRequest()) !== null) {
                    if ($weak !== null) {
                        $weakGone[] = $weak->get() === null;
                        $weak = null;
                    }
                    $came[] = $describe($request);
                    switch ($i++ % 5) {
                        case 0:
                            $kept[] = $request; // a second holder
                            break;
                        case 1:
                            $weak = \WeakReference::create($request); // a weak one: gone at the next
                            break;
                        case 2:
                            (static fn (TcpRequest $r): int => \strlen($r->body))($request); // held by a call, then not
                            break;
                        case 3:
                            $kept[] = clone $request; // a copy; the original is held by $request only
                            break;
                        default:
                            // held by $request only
                    }
                    $tcp->read();
                }
                $say(['came' => $came, 'kept' => array_map($describe, $kept), 'weak_gone' => $weakGone]);
                break;
            case 'bodies':
                // The extension may write the next body over the previous request's when nothing
                // else holds that string: a body kept, or looked up (its hash is cached in the
                // string), must be what it was.
                $known = [(string) hex2bin($step[1]) => true];
                $came = [];
                $found = [];
                $kept = [];
                $i = 0;
                while (($request = $tcp->waitRequest()) !== null) {
                    $came[] = bin2hex($request->body);
                    $found[] = isset($known[$request->body]);
                    if ($i++ % 3 === 0) {
                        $kept[] = $request->body;
                    }
                    $tcp->respond($request->body);
                }
                $say(['came' => $came, 'found' => $found, 'kept' => array_map('bin2hex', $kept)]);
                break;
            default:
                throw new \LogicException('unknown step ' . $step[0]);
        }
    } catch (PierException $e) {
        $say(['exception' => $e::class, 'message' => $e->getMessage()]);
    }
}
$say(['end' => true]);
