<?php

declare(strict_types=1);

namespace Pier\Examples\Chat;

use Pier\Tcp\Connections;
use Pier\Tcp\TcpEvent;
use Pier\Tcp\TcpRequest;
use Pier\Tcp\TcpResponse;
use Pier\Tcp\TcpWorker;

/**
 * The chat's rules for one event. A worker keeps nothing between events: who a connection is lives in
 * the connection state the server keeps ({"nick","room"} as JSON), and who is where lives in the
 * server's groups — "room:<name>" for the members of a room, "nick:<name>" for the one connection
 * using a nickname. A message to a room is one broadcast to its group: every member gets it, and
 * each speaker's messages in the order said (the events of one connection run one after another).
 */
final class Chat
{
    private const HELP = "Commands: /join <room>, /msg <nick> <text>, /who, /quit; anything else is said to the room.\n";

    public function __construct(
        private readonly TcpWorker $tcp,
        private readonly Connections $rpc,
    ) {
    }

    public function handle(TcpRequest $request): void
    {
        $me = $request->state === '' ? null : json_decode($request->state, true, 4, JSON_THROW_ON_ERROR);
        match ($request->event) {
            TcpEvent::Connected => $this->tcp->respond("Welcome to Pier chat. Your nickname: "),
            TcpEvent::Data => $me === null ? $this->register(rtrim($request->body, "\r\n")) : $this->command($me, rtrim($request->body, "\r\n"), $request->connectionUuid),
            // The connection is gone, and with it its groups: tell the room.
            default => $this->left($me),
        };
    }

    private function register(string $nick): void
    {
        if (preg_match('/^[A-Za-z0-9_-]{1,20}$/', $nick) !== 1) {
            $this->tcp->respond("A nickname is 1 to 20 letters, digits, '_' or '-'. Your nickname: ");

            return;
        }
        if ($this->rpc->count(group: "nick:{$nick}") > 0) {
            $this->tcp->respond("{$nick} is taken. Your nickname: ");

            return;
        }
        $this->tcp->join("nick:{$nick}");
        $this->enter($nick, 'lobby');
        $this->tcp->setState(self::state($nick, 'lobby'));
        $this->tcp->respond("Hi {$nick}, you are in lobby. " . self::HELP);
    }

    /**
     * @param array{nick: string, room: string} $me
     */
    private function command(array $me, string $line, string $uuid): void
    {
        [$word, $rest] = array_pad(explode(' ', $line, 2), 2, '');
        match ($word) {
            '' => $this->tcp->read(),
            '/join' => $this->move($me, trim($rest)),
            '/msg' => $this->whisper($me, $rest),
            '/who' => $this->who($me),
            '/quit' => $this->tcp->respond("Bye, {$me['nick']}.\n", TcpResponse::RespondClose),
            '/help' => $this->tcp->respond(self::HELP),
            default => str_starts_with($word, '/')
                ? $this->tcp->respond("Unknown command {$word}. " . self::HELP)
                : $this->say($me, $line),
        };
    }

    /**
     * @param array{nick: string, room: string} $me
     */
    private function say(array $me, string $text): void
    {
        // To every member, the sender included: the sender sees its line where the others do.
        $this->tcp->broadcast("[{$me['room']}] {$me['nick']}: {$text}\n", "room:{$me['room']}");
        $this->tcp->read();
    }

    /**
     * @param array{nick: string, room: string} $me
     */
    private function move(array $me, string $room): void
    {
        if (preg_match('/^[A-Za-z0-9_-]{1,32}$/', $room) !== 1) {
            $this->tcp->respond("A room name is 1 to 32 letters, digits, '_' or '-'.\n");

            return;
        }
        if ($room === $me['room']) {
            $this->tcp->respond("You are already in {$room}.\n");

            return;
        }
        $this->tcp->leave("room:{$me['room']}");
        $this->tcp->broadcast("* {$me['nick']} left {$me['room']}\n", "room:{$me['room']}");
        $this->enter($me['nick'], $room);
        $this->tcp->setState(self::state($me['nick'], $room));
        $this->tcp->respond("You are in {$room}.\n");
    }

    private function enter(string $nick, string $room): void
    {
        // The others hear it first, then the newcomer joins: it does not hear about itself.
        $this->tcp->broadcast("* {$nick} joined {$room}\n", "room:{$room}");
        $this->tcp->join("room:{$room}");
    }

    /**
     * @param array{nick: string, room: string} $me
     */
    private function whisper(array $me, string $rest): void
    {
        [$to, $text] = array_pad(explode(' ', trim($rest), 2), 2, '');
        if ($to === '' || $text === '') {
            $this->tcp->respond("Usage: /msg <nick> <text>\n");

            return;
        }
        if ($this->rpc->count(group: "nick:{$to}") === 0) {
            $this->tcp->respond("No one is called {$to}.\n");

            return;
        }
        $this->tcp->broadcast("[{$me['nick']} -> you] {$text}\n", "nick:{$to}");
        $this->tcp->respond("[you -> {$to}] {$text}\n");
    }

    /**
     * @param array{nick: string, room: string} $me
     */
    private function who(array $me): void
    {
        $nicks = [];
        $offset = 0;
        do {
            $page = $this->rpc->list(group: "room:{$me['room']}", offset: $offset, limit: 1000);
            foreach ($page['connections'] as $connection) {
                foreach ($connection['groups'] as $group) {
                    if (str_starts_with($group, 'nick:')) {
                        $nicks[] = substr($group, 5);
                    }
                }
            }
            $offset += 1000;
        } while ($offset < $page['total']);
        sort($nicks);
        $this->tcp->respond("In {$me['room']}: " . implode(', ', $nicks) . "\n");
    }

    /**
     * @param array{nick: string, room: string}|null $me
     */
    private function left(?array $me): void
    {
        if ($me !== null) {
            $this->tcp->broadcast("* {$me['nick']} left {$me['room']}\n", "room:{$me['room']}");
        }
        $this->tcp->close();
    }

    private static function state(string $nick, string $room): string
    {
        return json_encode(['nick' => $nick, 'room' => $room], JSON_THROW_ON_ERROR);
    }
}
