//! An exhaustive model check of the delivery's hand-over between a parked connection's task and
//! whoever holds its worker (`connection::Link`'s park states, `Line::pass_on`, the event's slot
//! in `pool::assign`): every interleaving of their steps, and of the client closing, is explored,
//! and none may send on a closed (or reused) descriptor, run the task's writer while a delivery
//! writes, finish the event before its answer is sent, or leave the task asleep with its event
//! failed to wake it.
//!
//! A model, not the code: each step below is one atomic operation or lock hand-over of the code
//! it names, restated (the code's atomics are not swappable for a checker such as `loom` without
//! restructuring `connection.rs` and `pool/`). It pins the reasoning the code's comments give, and
//! each deliberately broken variant must be caught by it, so that it can fail.
//!
//! The runner (`Line::pass_on`, the line locked throughout): loads the park state (`parked()`);
//! if parked, claims it (`PARKED → CLAIMED`), sends the answer on the descriptor, swaps the state
//! back to `AWAKE`, marks the slot done (`Handoff::Delivered`) and wakes the task if it was polled
//! meanwhile (`CLAIMED_WAKE`); if not parked or the claim fails, hands the worker over
//! (`Handoff::Worker`: the slot done, the task woken). The task, each time it is polled
//! (`Running::poll`): takes a park back (`unpark`), polls its event (`Waiter::poll`: the slot,
//! then, except on its first poll, the line's lock for `rewake` and the slot again), and if the
//! event is not done may run its writer, then parks (`AWAKE → PARKED`, only while its client has
//! not closed: the readiness check finds the close). Done with a delivered event it reads on: a
//! closed client makes it close the socket (whose number the next accept may take).

use std::collections::{HashSet, VecDeque};

const AWAKE: u8 = 0;
const PARKED: u8 = 1;
const CLAIMED: u8 = 2;
const CLAIMED_WAKE: u8 = 3;

/// The event's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    /// In the line, waiting for its turn.
    Linked,
    /// Its answer was written for it.
    Delivered,
    /// The worker was handed to it: it reads its answer itself.
    Worker,
    /// The task took what was sent.
    Taken,
}

/// Where the runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Runner {
    /// Before it locks the line.
    Start,
    /// Locked: loads the park state.
    Load,
    /// Parked: claims it.
    Claim,
    /// Claimed: sends the answer.
    Send,
    /// Sent: swaps the state back.
    Swap,
    /// Marks the slot delivered (and wakes the task after `CLAIMED_WAKE`).
    Done,
    /// Hands the worker over instead.
    HandOver,
    /// Unlocks.
    Unlock,
    /// Finished.
    End,
}

/// Where the task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Task {
    /// Not running: waits for a wake-up.
    Asleep,
    /// Polled: takes a park back.
    Unpark,
    /// Looks at the slot.
    TryTake,
    /// Locks the line (`rewake`): waits while the runner holds it.
    Lock,
    /// Looks at the slot again under the lock, then unlocks.
    TryTakeLocked,
    /// Its writer runs (uses the socket).
    Write,
    /// Parks, if it may.
    Park,
    /// The event is done: it reads on (a closed client: it closes the socket).
    ReadOn,
    /// Finished for this model: the socket is closed, or it waits for the next packet.
    Finished,
}

/// A deliberately broken variant of the protocol: each must be caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// As the code is.
    Correct,
    /// The slot marked done before the send (the event given up while its descriptor is used).
    DoneBeforeSend,
    /// The task does not take a park back when polled.
    NoUnpark,
    /// The task's later polls do not take the line's lock (`rewake` without it).
    NoLockOnRepoll,
    /// The task parks even though its client closed (no readiness check).
    ParksAfterClose,
    /// No wake-up after a delivery that found the task polled meanwhile (`CLAIMED_WAKE`).
    NoClaimedWake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    park: u8,
    slot: Slot,
    /// The line's lock: held by the runner (`Some(true)`) or the task (`Some(false)`).
    lock: Option<bool>,
    runner: Runner,
    /// What the runner's swap found.
    was: u8,
    task: Task,
    /// The task's first poll of the wait (`Waiter::poll`'s `fresh`: no `rewake`).
    fresh: bool,
    /// A wake-up is pending (the task will be polled).
    woken: bool,
    /// The client closed its side (the task's readiness fires once it is registered).
    client_closed: bool,
    /// The socket is open (its descriptor number is this connection's).
    open: bool,
    /// Times the answer was sent.
    sent: u8,
    /// The task took its event as delivered before the answer was sent.
    early: bool,
}

/// The states reachable in one step from `s` (the task's, the runner's, the client's).
fn next(s: State, v: Variant) -> Vec<State> {
    let mut out = Vec::new();
    // The client closes, once, at any moment: the task is woken (its readiness registration).
    if !s.client_closed {
        out.push(State {
            client_closed: true,
            woken: true,
            ..s
        });
    }
    // The runner.
    let mut r = s;
    match s.runner {
        Runner::Start if s.lock.is_none() => {
            r.lock = Some(true);
            r.runner = Runner::Load;
        }
        Runner::Start => {}
        Runner::Load => {
            r.runner = if s.park == PARKED {
                Runner::Claim
            } else {
                Runner::HandOver
            };
        }
        Runner::Claim => {
            if s.park == PARKED {
                r.park = CLAIMED;
                r.runner = if v == Variant::DoneBeforeSend {
                    Runner::Done
                } else {
                    Runner::Send
                };
            } else {
                r.runner = Runner::HandOver;
            }
        }
        Runner::Send => {
            r.sent += 1;
            r.runner = if v == Variant::DoneBeforeSend {
                Runner::Unlock
            } else {
                Runner::Swap
            };
        }
        Runner::Swap => {
            r.was = s.park;
            r.park = AWAKE;
            r.runner = Runner::Done;
        }
        Runner::Done => {
            r.slot = Slot::Delivered;
            if v == Variant::DoneBeforeSend {
                // Swapped back and done, with the send still to come.
                r.was = s.park;
                r.park = AWAKE;
                r.runner = Runner::Send;
            } else {
                r.runner = Runner::Unlock;
            }
            if r.was == CLAIMED_WAKE && v != Variant::NoClaimedWake {
                r.woken = true;
            }
        }
        Runner::HandOver => {
            r.slot = Slot::Worker;
            r.woken = true;
            r.runner = Runner::Unlock;
        }
        Runner::Unlock => {
            r.lock = None;
            r.runner = Runner::End;
        }
        Runner::End => {}
    }
    if r != s {
        out.push(r);
    }
    // The task.
    let mut t = s;
    match s.task {
        Task::Asleep if s.woken => {
            t.woken = false;
            t.task = Task::Unpark;
        }
        Task::Asleep => {}
        Task::Unpark => {
            if v != Variant::NoUnpark {
                t.park = match s.park {
                    PARKED => AWAKE,
                    CLAIMED => CLAIMED_WAKE,
                    other => other,
                };
            }
            t.task = Task::TryTake;
        }
        Task::TryTake => {
            t.task = if s.slot != Slot::Linked {
                Task::ReadOn
            } else if s.fresh || v == Variant::NoLockOnRepoll {
                Task::Write
            } else {
                Task::Lock
            };
            t.fresh = false;
        }
        Task::Lock if s.lock.is_none() => {
            t.lock = Some(false);
            t.task = Task::TryTakeLocked;
        }
        Task::Lock => {}
        Task::TryTakeLocked => {
            t.lock = None;
            t.task = if s.slot != Slot::Linked {
                Task::ReadOn
            } else {
                Task::Write
            };
        }
        Task::Write => t.task = Task::Park,
        Task::Park => {
            if s.park == AWAKE && (!s.client_closed || v == Variant::ParksAfterClose) {
                t.park = PARKED;
            }
            t.task = Task::Asleep;
        }
        Task::ReadOn => {
            t.early |= s.slot == Slot::Delivered && s.sent == 0;
            t.slot = Slot::Taken;
            if s.client_closed {
                // Reads the close, closes the socket: its number is free for the next accept.
                t.open = false;
                t.task = Task::Finished;
            } else {
                // Waits for its next packet (or the close) with the event done.
                t.task = Task::Asleep;
            }
        }
        Task::Finished => {}
    }
    if t != s {
        out.push(t);
    }
    out
}

/// What must hold in every state.
fn check(s: &State) -> Result<(), String> {
    if s.runner == Runner::Send && !s.open {
        return Err("a send on a closed (or reused) descriptor".into());
    }
    if matches!(s.runner, Runner::Send | Runner::Swap) && s.task == Task::Write {
        return Err("the task's writer runs while a delivery writes".into());
    }
    if s.early {
        return Err("the event finished before its answer was sent".into());
    }
    if s.sent > 1 {
        return Err("the answer was sent twice".into());
    }
    Ok(())
}

/// What must hold where nothing can move any more.
fn check_end(s: &State) -> Result<(), String> {
    if s.runner != Runner::End {
        return Err(format!("the runner is stuck at {:?}", s.runner));
    }
    match s.task {
        Task::Finished => Ok(()),
        // Asleep while its client is open: the next packet wakes it (a delivered event is found
        // done then); not with the worker handed to it (nobody else reads its answer), nor with
        // its client closed (it would never close the connection).
        Task::Asleep if s.slot != Slot::Worker && !s.client_closed => Ok(()),
        _ => Err(format!(
            "a lost wake-up: the task is {:?} with the slot {:?}, client closed {}",
            s.task, s.slot, s.client_closed
        )),
    }
}

/// Explores every interleaving from the two starting points (the task parked after its first
/// poll; the task being polled for the first time while the runner comes); returns the number
/// of states, or the first violation with the path to it.
fn explore(v: Variant) -> Result<usize, String> {
    let base = State {
        park: AWAKE,
        slot: Slot::Linked,
        lock: None,
        runner: Runner::Start,
        was: AWAKE,
        task: Task::Unpark,
        fresh: true,
        woken: false,
        client_closed: false,
        open: true,
        sent: 0,
        early: false,
    };
    let starts = [
        base,
        State {
            park: PARKED,
            task: Task::Asleep,
            fresh: false,
            ..base
        },
    ];
    let mut seen: HashSet<State> = HashSet::new();
    let mut queue: VecDeque<(State, Vec<State>)> = VecDeque::new();
    for s in starts {
        seen.insert(s);
        queue.push_back((s, vec![s]));
    }
    while let Some((s, path)) = queue.pop_front() {
        let fail = |e: String| {
            let steps: Vec<String> = path.iter().map(|s| format!("  {s:?}")).collect();
            format!("{v:?}: {e}, after\n{}", steps.join("\n"))
        };
        check(&s).map_err(fail)?;
        let next = next(s, v);
        if next.is_empty() {
            check_end(&s).map_err(fail)?;
        }
        for n in next {
            if seen.insert(n) {
                let mut p = path.clone();
                p.push(n);
                queue.push_back((n, p));
            }
        }
    }
    Ok(seen.len())
}

/// The protocol as the code has it: no violation in any interleaving.
#[test]
fn every_interleaving_of_a_delivery_and_its_task_is_safe() {
    let states = explore(Variant::Correct).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{states} states explored");
    assert!(states > 50, "too few states: {states}");
}

/// Each broken variant is caught (the model can fail), except the one the model shows harmless:
/// the wake-up after `CLAIMED_WAKE` is never needed, since a task polled during a delivery waits
/// for the line's lock in `rewake` and finds its slot done once it gets it.
#[test]
fn each_broken_variant_of_the_protocol_is_caught() {
    for v in [
        Variant::DoneBeforeSend,
        Variant::NoUnpark,
        Variant::NoLockOnRepoll,
        Variant::ParksAfterClose,
    ] {
        let e = explore(v).expect_err(&format!("{v:?} was not caught"));
        eprintln!("{}", e.lines().next().unwrap());
    }
    explore(Variant::NoClaimedWake).expect("the CLAIMED_WAKE wake-up is redundant");
}
