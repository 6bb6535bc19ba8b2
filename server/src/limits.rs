//! Connection limits and timeouts per server: admission at accept (`max_connections`,
//! `max_connections_per_ip`, `accept_rate_per_ip`), TCP keep-alive on accepted sockets, and the
//! idle clock of a connection's reads (`idle_timeout`).
//!
//! Admission runs before any event: a connection over a limit is closed at once (no CONNECTED,
//! no CLOSE), logged (at most one line a second per server, with the number turned away per
//! limit and the latest address, so a flood cannot flood the log) and counted in
//! `pier_connections_rejected_total`. The open count is one atomic; the per-address table is
//! touched only when a per-address limit is set, once at admission and once at close, and it
//! holds only addresses with open connections or a bucket still refilling, so it stays bounded by
//! what the limits let in.
//!
//! Behind a PROXY balancer (`proxy_protocol`) the socket's address is the balancer's, so the
//! per-address limits wait for the header: [`Admission::admit`] checks `max_connections` at
//! accept, [`Admission::admit_client`] the per-address limits on the header's client address
//! (the socket's for v2 LOCAL and v1 UNKNOWN, as the events' `remote_addr`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::log_scope::{debug, warn};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{KeepaliveConfig, LimitsConfig};
use crate::ops::{RejectReason, ServerMetrics};

/// Per-address entries beyond which idle ones (no open connection, bucket full) are dropped.
const PRUNE_AT: usize = 4096;

/// One source address's open connections and accept-rate bucket.
#[derive(Debug)]
struct PerIp {
    /// Connections open from this address.
    open: usize,
    /// Accept tokens left (a token bucket: `accept_rate_per_ip` per second, same burst).
    tokens: f64,
    /// When `tokens` was last refilled.
    refilled: Instant,
}

/// The admission state of one server.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The server's name, for logs.
    server: String,
    /// The limits.
    limits: LimitsConfig,
    /// Connections open now (admitted, not yet dropped).
    open: AtomicUsize,
    /// Per source address; used only when a per-address limit is set.
    by_ip: Mutex<HashMap<IpAddr, PerIp>>,
    /// Rejections not yet logged, per reason, and when the last line was written (`None`: never).
    log: Mutex<(Option<Instant>, [u64; 3])>,
    /// Where rejections are counted.
    metrics: ServerMetrics,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Permit {
    /// The admission it counts in.
    admission: Arc<Admission>,
    /// Its source address, when a per-address limit counts it.
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            if let Ok(mut table) = self.admission.by_ip.lock() {
                if let Some(entry) = table.get_mut(&ip) {
                    entry.open = entry.open.saturating_sub(1);
                }
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(server: &str, limits: LimitsConfig, metrics: ServerMetrics) -> Arc<Self> {
        Arc::new(Admission {
            server: server.to_owned(),
            limits,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            log: Mutex::new((None, [0; 3])),
            metrics,
        })
    }

    /// Admits a connection accepted from `ip`, or says which limit it is over (logged and counted
    /// here). `per_address`: check the per-address limits on `ip` now; false for servers behind
    /// a PROXY balancer, whose per-address limits [`Admission::admit_client`] checks once the
    /// header has named the client.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        per_address: bool,
    ) -> Result<Permit, RejectReason> {
        let now = Instant::now();
        self.try_admit(ip, per_address, now)
            .map_err(|reason| self.rejected(reason, ip, None, now))
    }

    /// The per-address limits for a connection whose PROXY header (from the balancer at `peer`)
    /// named `client`; on refusal the connection is to be closed (logged and counted here).
    pub(crate) fn admit_client(
        &self,
        permit: &mut Permit,
        client: IpAddr,
        peer: SocketAddr,
    ) -> Result<(), RejectReason> {
        let now = Instant::now();
        self.try_admit_address(permit, client, now).map_err(|reason| {
            debug!(server = %self.server, %client, balancer = %peer, limit = reason.as_str(), "connection closed after its PROXY header: over a per-address limit");
            self.rejected(reason, client, Some(peer), now)
        })
    }

    fn rejected(
        &self,
        reason: RejectReason,
        address: IpAddr,
        balancer: Option<SocketAddr>,
        now: Instant,
    ) -> RejectReason {
        self.metrics.rejected(reason);
        self.log_rejection(reason, address, balancer, now);
        reason
    }

    fn try_admit(
        self: &Arc<Self>,
        ip: IpAddr,
        per_address: bool,
        now: Instant,
    ) -> Result<Permit, RejectReason> {
        let max = self.limits.max_connections;
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        // From here on the permit owns the count, so every early return gives it back.
        let mut permit = Permit {
            admission: self.clone(),
            ip: None,
        };
        if max > 0 && open >= max {
            return Err(RejectReason::MaxConnections);
        }
        if per_address {
            self.try_admit_address(&mut permit, ip, now)?;
        }
        Ok(permit)
    }

    /// Counts `permit` under `ip` when that address is within its per-address limits.
    fn try_admit_address(
        &self,
        permit: &mut Permit,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), RejectReason> {
        let per_ip = self.limits.max_connections_per_ip;
        let rate = self.limits.accept_rate_per_ip;
        if per_ip == 0 && rate == 0 {
            return Ok(());
        }
        // One entry per host whether it came as IPv4 or IPv4-mapped IPv6.
        let ip = ip.to_canonical();
        let Ok(mut table) = self.by_ip.lock() else {
            return Ok(());
        };
        if table.len() >= PRUNE_AT {
            prune(&mut table, rate, now);
        }
        let entry = table.entry(ip).or_insert(PerIp {
            open: 0,
            tokens: f64::from(rate),
            refilled: now,
        });
        if per_ip > 0 && entry.open >= per_ip {
            return Err(RejectReason::PerIpLimit);
        }
        if rate > 0 {
            refill(entry, rate, now);
            if entry.tokens < 1.0 {
                return Err(RejectReason::AcceptRate);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        permit.ip = Some(ip);
        Ok(())
    }

    /// Logs rejections at most once a second per server: the first at once, the next ones with
    /// the first rejection a second or more after the last line, with how many there were per
    /// limit and the address of the one that wrote the line (the client's, and the balancer's
    /// behind PROXY). Rejections after the last line of a flood are in the metrics only.
    fn log_rejection(
        &self,
        reason: RejectReason,
        address: IpAddr,
        balancer: Option<SocketAddr>,
        now: Instant,
    ) {
        let Ok(mut log) = self.log.lock() else {
            return;
        };
        let at = match reason {
            RejectReason::MaxConnections => 0,
            RejectReason::PerIpLimit => 1,
            RejectReason::AcceptRate => 2,
        };
        log.1[at] += 1;
        if log
            .0
            .is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        let counts = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        let names = [
            RejectReason::MaxConnections,
            RejectReason::PerIpLimit,
            RejectReason::AcceptRate,
        ];
        for (reason, n) in names.iter().zip(counts) {
            if n > 0 {
                warn!(
                    server = %self.server,
                    limit = reason.as_str(),
                    rejected = n,
                    latest_address = %address,
                    balancer = balancer.map(tracing::field::display),
                    max_connections = self.limits.max_connections,
                    max_connections_per_ip = self.limits.max_connections_per_ip,
                    accept_rate_per_ip = self.limits.accept_rate_per_ip,
                    "new connections closed at once: over a connection limit"
                );
            }
        }
    }
}

fn refill(entry: &mut PerIp, rate: u32, now: Instant) {
    let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
    entry.tokens = (entry.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
    entry.refilled = now;
}

/// Drops entries that carry no information: nothing open and the bucket full again.
fn prune(table: &mut HashMap<IpAddr, PerIp>, rate: u32, now: Instant) {
    table.retain(|_, e| {
        if e.open > 0 {
            return true;
        }
        if rate == 0 {
            return false;
        }
        refill(e, rate, now);
        e.tokens < f64::from(rate)
    });
}

/// Turns on TCP keep-alive probes on an accepted socket as configured.
pub(crate) fn set_keepalive(stream: &TcpStream, ka: &KeepaliveConfig) -> std::io::Result<()> {
    let params = socket2::TcpKeepalive::new()
        .with_time(ka.time)
        .with_interval(ka.interval)
        .with_retries(ka.retries);
    socket2::SockRef::from(stream).set_tcp_keepalive(&params)
}

/// A connection's read half that counts the bytes it reads (for `pier_received_bytes_total`) and
/// keeps the connection's idle clock while an idle timeout applies.
///
/// The idle clock is lazy: activity costs a store, not a timer reset. A read only marks that
/// bytes came (`fresh`); the time is taken when it matters (the connection goes back to waiting,
/// or its event ends, which restarts the clock anyway). One timer per connection (`sleep`) is set
/// no later than the deadline and, when it fires, the deadline is computed again and the timer
/// set for the remainder: at 100 × 1 a connection's timer fires once per timeout, not per
/// message. Before, every wait for a packet made and dropped a `Sleep` (two trips through the
/// timer wheel's lock) and read the clock twice per message (bench/results/2026-12-01-idle.md).
/// The clock's fields are here, in the task's state, and only the timer is boxed: a message then
/// touches the timer's line alone (its state, read by a park's check) besides the task's.
#[derive(Debug)]
pub(crate) struct Reader<R> {
    /// The socket.
    inner: R,
    /// The idle clock's timer while an idle timeout applies (boxed: most servers have no idle
    /// timeout, and a `Sleep` is large), set for the deadline or earlier; `None`: no idle
    /// timeout, no clock read.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The idle timeout (while `sleep` is set).
    timeout: Duration,
    /// When the client last sent bytes or the connection's last event ended, in
    /// [`coarse_now_ns`] time (while `sleep` is set).
    last: u64,
    /// Bytes came since the idle clock last took the time.
    fresh: bool,
    /// `sleep` wakes this task no later than the deadline: set since the last change of
    /// `timeout`, polled (the task's waker registered) since it was set, not fired.
    armed: bool,
    /// Where bytes are counted.
    metrics: ServerMetrics,
}

/// The coarse clock's resolution bound: the kernel's tick, 1 to 10 ms (`HZ` 1000 to 100; 4 ms
/// on the bench host, `clock_getres`). Added to every deadline, so that a connection is never
/// closed before its client was silent for the whole timeout, whatever the two readings' places
/// in their ticks.
const COARSE_TICK_NS: u64 = 10_000_000;

/// `CLOCK_MONOTONIC_COARSE` in ns (the idle clock's time; a clock read per message mattered).
pub(crate) use crate::pool::coarse_now_ns;

impl<R> Reader<R> {
    /// A read half with the idle clock on when `idle_timeout` is set, counting from now.
    pub(crate) fn new(inner: R, idle_timeout: Option<Duration>, metrics: ServerMetrics) -> Self {
        let mut reader = Reader {
            inner,
            sleep: None,
            timeout: Duration::ZERO,
            last: 0,
            fresh: false,
            armed: false,
            metrics,
        };
        reader.retrack(idle_timeout);
        reader
    }

    /// Sets the idle timeout (after every event: a worker may have set or removed the
    /// connection's): starting the clock counts from now; a new timeout takes effect at the next
    /// wait. Inline: the usual call changes nothing.
    #[inline]
    pub(crate) fn track(&mut self, idle_timeout: Option<Duration>) {
        match (idle_timeout, &self.sleep) {
            (None, None) => {}
            (Some(timeout), Some(_)) if self.timeout == timeout => {}
            _ => self.retrack(idle_timeout),
        }
    }

    /// [`Reader::track`] when the timeout changes.
    #[cold]
    fn retrack(&mut self, idle_timeout: Option<Duration>) {
        let Some(timeout) = idle_timeout else {
            self.sleep = None;
            return;
        };
        self.timeout = timeout;
        self.armed = false;
        if self.sleep.is_none() {
            self.last = coarse_now_ns();
            // Set when first armed (a `Sleep` is registered only once polled).
            self.sleep = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
        }
    }

    /// An event ended: time spent on our side is not the client being idle, so the clock
    /// restarts at its end: `answered()`, when not 0, is when its answer was written by whoever
    /// held the worker (`connection::Link::deliver`, [`coarse_now_ns`] time), else now. Without
    /// an idle timeout nothing is read.
    pub(crate) fn ended(&mut self, answered: impl FnOnce() -> u64) {
        if self.sleep.is_some() {
            let at = answered();
            self.last = if at == 0 { coarse_now_ns() } else { at };
            self.fresh = false;
        }
    }

    /// The connection waits for its client: `Ready` once the client has sent no byte for the
    /// idle timeout since the later of its last bytes and the end of the last event, else
    /// `Pending` with the timer set to wake the task no later than that. Never without an idle
    /// timeout.
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        if std::mem::take(&mut self.fresh) {
            // Bytes came in this poll (the wait reads, then looks here).
            self.last = coarse_now_ns();
        }
        if self.armed && !sleep.is_elapsed() {
            return Poll::Pending;
        }
        let now = coarse_now_ns();
        let due = idle_due(self.last, self.timeout);
        if now >= due {
            return Poll::Ready(());
        }
        arm(sleep.as_mut(), &mut self.armed, due - now, cx);
        Poll::Pending
    }

    /// The connection's task is about to wait inside a running event (`connection::Running`
    /// parks: nothing but the client's next bytes or the signal will wake it, its answer may be
    /// written without it): makes sure the timer wakes it no later than the idle deadline, which
    /// is at least a timeout after the event ends. Nothing to do while the timer is set (one
    /// load of its state); without an idle timeout, nothing at all.
    #[inline]
    pub(crate) fn watch_while_busy(&mut self, cx: &mut Context<'_>) {
        match &self.sleep {
            Some(sleep) if !self.armed || sleep.is_elapsed() => self.rearm_while_busy(cx),
            _ => {}
        }
    }

    /// [`Reader::watch_while_busy`] when the timer is not set.
    #[cold]
    fn rearm_while_busy(&mut self, cx: &mut Context<'_>) {
        let Some(sleep) = &mut self.sleep else {
            return;
        };
        let now = coarse_now_ns();
        if std::mem::take(&mut self.fresh) {
            self.last = now;
        }
        // The event ends after now: a timeout from now is no later than the deadline either.
        let due = idle_due(self.last, self.timeout).max(now.saturating_add(nanos(self.timeout)));
        arm(sleep.as_mut(), &mut self.armed, due - now, cx);
    }

    /// The socket back (STARTTLS re-wraps it).
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

/// The idle deadline, in [`coarse_now_ns`] time: a timeout after `last`, plus the coarse clock's
/// tick bound, so that it is never early ([`COARSE_TICK_NS`]).
#[inline]
fn idle_due(last: u64, timeout: Duration) -> u64 {
    last.saturating_add(nanos(timeout))
        .saturating_add(COARSE_TICK_NS)
}

/// A duration in ns, as the idle clock keeps them (saturating: over 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sets `sleep` for `after` ns from now and registers the task's waker with it.
fn arm(
    mut sleep: Pin<&mut tokio::time::Sleep>,
    armed: &mut bool,
    after: u64,
    cx: &mut Context<'_>,
) {
    sleep
        .as_mut()
        .reset(tokio::time::Instant::now() + Duration::from_nanos(after));
    // Outside the coop budget: a `Sleep` polled with the budget spent returns `Pending` without
    // registering the waker, and a parked task relies on this one. Just set, it is not due.
    let _ = std::pin::pin!(tokio::task::unconstrained(sleep)).poll(cx);
    *armed = true;
}

impl<R> Reader<R> {
    /// Counts `n` bytes read (none: nothing to do).
    #[inline]
    fn came(&mut self, n: usize) {
        if n > 0 {
            self.metrics.received(n);
            // A store, whether or not a clock runs (cheaper than asking).
            self.fresh = true;
        }
    }
}

impl<R: crate::framing::ReadReady> crate::framing::ReadReady for Reader<R> {
    // Nothing is read: no bytes to count, no clock to restart.
    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }

    #[inline]
    fn try_read_direct(&mut self, buf: &mut impl bytes::BufMut) -> Option<std::io::Result<usize>> {
        let read = self.inner.try_read_direct(buf)?;
        if let Ok(n) = read {
            self.came(n);
        }
        Some(read)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Reader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.came(n);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_ip: usize, rate: u32) -> Arc<Admission> {
        Admission::new(
            "t",
            LimitsConfig {
                max_connections: max,
                max_connections_per_ip: per_ip,
                accept_rate_per_ip: rate,
                ..LimitsConfig::default()
            },
            ServerMetrics::default(),
        )
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn max_connections_frees_on_drop() {
        let a = admission(2, 0, 0);
        let now = Instant::now();
        let p1 = a.try_admit(A, true, now).unwrap();
        let _p2 = a.try_admit(B, true, now).unwrap();
        assert_eq!(
            a.try_admit(A, true, now).unwrap_err(),
            RejectReason::MaxConnections
        );
        drop(p1);
        let _p3 = a.try_admit(A, true, now).unwrap();
        assert_eq!(
            a.open.load(Ordering::Relaxed),
            2,
            "a rejection holds nothing"
        );
    }

    #[test]
    fn per_ip_limit_counts_each_address() {
        let a = admission(0, 2, 0);
        let now = Instant::now();
        let p1 = a.try_admit(A, true, now).unwrap();
        let _p2 = a.try_admit(A, true, now).unwrap();
        assert_eq!(
            a.try_admit(A, true, now).unwrap_err(),
            RejectReason::PerIpLimit
        );
        let _b = a.try_admit(B, true, now).unwrap();
        drop(p1);
        let _p3 = a.try_admit(A, true, now).unwrap();
    }

    #[test]
    fn accept_rate_is_a_token_bucket_per_address() {
        let a = admission(0, 0, 3);
        let t0 = Instant::now();
        let held: Vec<_> = (0..3).map(|_| a.try_admit(A, true, t0).unwrap()).collect();
        assert_eq!(
            a.try_admit(A, true, t0).unwrap_err(),
            RejectReason::AcceptRate
        );
        assert!(
            a.try_admit(B, true, t0).is_ok(),
            "another address has its own bucket"
        );
        // One token back every third of a second.
        assert_eq!(
            a.try_admit(A, true, t0 + Duration::from_millis(200))
                .unwrap_err(),
            RejectReason::AcceptRate
        );
        assert!(a
            .try_admit(A, true, t0 + Duration::from_millis(400))
            .is_ok());
        drop(held);
    }

    #[test]
    fn behind_a_balancer_each_client_address_has_its_own_limits() {
        let a = admission(3, 1, 0);
        let balancer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lb = balancer.ip();
        // At accept only max_connections counts: three from the balancer's one address.
        let mut p1 = a.admit(lb, false).unwrap();
        let mut p2 = a.admit(lb, false).unwrap();
        let mut p3 = a.admit(lb, false).unwrap();
        assert_eq!(
            a.admit(lb, false).unwrap_err(),
            RejectReason::MaxConnections
        );
        a.admit_client(&mut p1, A, balancer).unwrap();
        a.admit_client(&mut p2, B, balancer).unwrap();
        // The same client as IPv4-mapped IPv6 is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            a.admit_client(&mut p3, mapped, balancer).unwrap_err(),
            RejectReason::PerIpLimit
        );
        // A refused connection and a closed one give their places back.
        drop(p3);
        drop(p1);
        let mut p4 = a.admit(lb, false).unwrap();
        a.admit_client(&mut p4, A, balancer).unwrap();
        assert_eq!(a.open.load(Ordering::Relaxed), 2);
        drop((p2, p4));
        assert!(a.by_ip.lock().unwrap().values().all(|e| e.open == 0));
    }

    /// A waker that counts its wake-ups, to see what the idle timer wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `f` once with `waker`.
    fn once<T>(waker: &Arc<Count>, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
        let waker = std::task::Waker::from(waker.clone());
        f(&mut Context::from_waker(&waker))
    }

    /// Waits (bounded, real time: the idle clock is the kernel's) until `count` was woken.
    async fn woken(count: &Count, limit: Duration) -> Duration {
        let start = Instant::now();
        while count.0.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < limit, "not woken within {limit:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        start.elapsed()
    }

    fn reader(timeout: Duration) -> Reader<()> {
        Reader::new((), Some(timeout), ServerMetrics::default())
    }

    /// The deadline counts from the client's last bytes: bytes that came restart it (taken when
    /// the wait looks), and it is never before the whole timeout.
    #[tokio::test]
    async fn the_idle_deadline_is_a_timeout_after_the_last_bytes() {
        const T: Duration = Duration::from_millis(100);
        let mut r = reader(T);
        let count = Arc::new(Count::default());
        assert!(once(&count, |cx| r.poll_deadline(cx)).is_pending());
        tokio::time::sleep(Duration::from_millis(60)).await;
        r.came(1);
        let came = Instant::now();
        assert!(once(&count, |cx| r.poll_deadline(cx)).is_pending());
        // The timer set for the first deadline fires early: the wait looks again and sets it
        // for the remainder, until the deadline is there.
        loop {
            woken(&count, Duration::from_secs(5)).await;
            count.0.store(0, Ordering::SeqCst);
            if once(&count, |cx| r.poll_deadline(cx)).is_ready() {
                break;
            }
        }
        let idle = came.elapsed();
        assert!(idle >= T, "closed after {idle:?} of silence");
        assert!(idle < T + Duration::from_millis(500), "{idle:?}");
    }

    /// A task that parks inside an event whose idle timer already fired gets it set again: it
    /// is woken, and the wait then counts from when the event's answer was delivered.
    #[tokio::test]
    async fn a_parked_task_s_fired_timer_is_set_again_and_the_answer_restarts_the_clock() {
        const T: Duration = Duration::from_millis(60);
        let mut r = reader(T);
        let count = Arc::new(Count::default());
        assert!(once(&count, |cx| r.poll_deadline(cx)).is_pending());
        woken(&count, Duration::from_secs(5)).await;
        count.0.store(0, Ordering::SeqCst);
        // The event is under way (the task parks): not the client being idle, and its timer is
        // set again (without it, nothing would wake the task again).
        once(&count, |cx| r.watch_while_busy(cx));
        let waited = woken(&count, Duration::from_secs(5)).await;
        assert!(waited + Duration::from_millis(5) >= T, "{waited:?}");
        // Its answer was delivered just now: a timeout from it, not from the last bytes.
        r.ended(coarse_now_ns);
        assert!(once(&count, |cx| r.poll_deadline(cx)).is_pending());
        // And with the idle timeout off, never.
        r.track(None);
        assert!(once(&count, |cx| r.poll_deadline(cx)).is_pending());
    }

    #[test]
    fn the_table_forgets_quiet_addresses() {
        let a = admission(0, 0, 1);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            drop(a.try_admit(ip, true, t0).unwrap());
        }
        // A second later every bucket is full again and nothing is open: all are dropped.
        let _p = a.try_admit(A, true, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(a.by_ip.lock().unwrap().len(), 1);
    }
}
