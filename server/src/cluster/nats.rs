//! The NATS transport (`async-nats`): one client connection that publishes and holds the two
//! subscriptions, kept alive by the client itself.
//!
//! `async-nats` already reconnects (here with [`backoff`]), resubscribes after every reconnect
//! and pings: this module maps its events to [`Shared::set_up`] / [`Shared::set_down`] (logged),
//! feeds it from the one queue in order, and restores the order across the two subscriptions.
//! NATS itself delivers one publisher's messages to one subscribing connection in the order
//! published, but the client hands each subscription its own queue, so a payload on
//! `<prefix>.all` could overtake an earlier one on `<prefix>.node.<node>`. Each payload is
//! therefore sent behind a 16-byte stamp (publisher id, sequence number); [`Merge`] releases
//! payloads in sequence order per publisher, only once nothing earlier can still be in flight.
//! The stamp is the transport's: the cluster sees its own payloads.
//!
//! One connection rather than two: NATS multiplexes subscriptions on a connection and orders a
//! connection's operations, so a subscription made before a publish is in place for it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::config::{BusTls, PemFile};

use super::bus::{backoff, BusError, Link, Shared, FLUSH_GRACE, INBOX};

/// Connecting (TCP and the INFO/CONNECT handshake) may take this long per attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the client pings the server; two missed answers and the connection is replaced.
const PING_EVERY: Duration = Duration::from_secs(10);
/// The stamp before each payload on the wire: publisher id, then sequence number (big endian).
const STAMP: usize = 16;
/// NATS' default `max_payload`, until the server announces its own.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Set in the stamp's publisher id of a probe (see [`Prober`]), clear in a payload's.
const PROBE_BIT: u64 = 1 << 63;

/// Checks the URL and starts the task that owns the client.
pub(super) fn start(
    url: &str,
    tls: Option<&BusTls>,
    link: Link,
    tracker: &TaskTracker,
) -> Result<(), BusError> {
    let (addr, auth) = split_credentials(url).map_err(|err| BusError::url(url, err))?;
    let addr: ServerAddr = addr
        .parse()
        .map_err(|err: std::io::Error| BusError::url(url, err))?;
    let mut options = ConnectOptions::new();
    options = match auth {
        Auth::None => options,
        Auth::UserPassword(user, password) => options.user_and_password(user, password),
        Auth::Token(token) => options.token(token),
    };
    let refused = Refused::default();
    if addr.tls_required() || tls.is_some() {
        // Built once here. async-nats (0.46, and up to its main branch: nats-io/nats.rs#1622)
        // still loads the system's roots at every TLS connection and discards them when a
        // config is given: ~18.5M instructions and ~147 file opens on Debian (the bundle and
        // /etc/ssl/certs), ~85 % of a TLS connect, on the runtime thread. Its only way around
        // (CA files by path) would lose `Noting`'s reason for a refused certificate, and a
        // connection is rare (start, then reconnects): kept until async-nats fixes it.
        let config = tls_config(tls, &refused).map_err(|problem| BusError::tls(url, problem))?;
        options = options.require_tls(true).tls_client_config(config);
    }
    link.shared
        .max_payload
        .store(DEFAULT_MAX_PAYLOAD - STAMP, Ordering::Relaxed);
    tracker.spawn(run(addr, options, refused, link));
    Ok(())
}

/// What the last TLS handshake went wrong on, noted by [`Noting`] (the server's certificate
/// refused) and [`NoClientCert`] (a client certificate asked for, none configured): async-nats
/// reports a failed connection as "IO error" only, which would leave the log without the cause.
/// Emptied at each connection.
type Refused = Arc<Mutex<Option<String>>>;

/// Notes `why` in `refused` for the next "could not connect" line.
fn note(refused: &Refused, why: String) {
    *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
}

/// The TLS client config of a NATS bus: ring (the provider of every TLS connection here), the
/// `cluster.tls.ca` roots or else the system's, the client certificate if any, from the files'
/// text read at load. Built here rather than from async-nats' file options so that the reason a
/// server certificate is refused is kept ([`Noting`]).
fn tls_config(tls: Option<&BusTls>, refused: &Refused) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |key: &str, file: &PemFile| {
        CertificateDer::pem_slice_iter(&file.pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("could not use {key} file {}: {e}", file.path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca.as_ref()) {
        Some(ca) => {
            let (added, _) = roots.add_parsable_certificates(certs("cluster.tls.ca", ca)?);
            if added == 0 {
                return Err(format!(
                    "could not use cluster.tls.ca file {}: no usable CA certificate",
                    ca.path.display()
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("could not use the bus' trusted roots: {e} (set cluster.tls.ca)"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("could not set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Noting {
            inner,
            refused: refused.clone(),
        }));
    match tls.and_then(|t| t.client.as_ref()) {
        None => Ok(builder.with_client_cert_resolver(Arc::new(NoClientCert {
            refused: refused.clone(),
        }))),
        Some((cert, key)) => {
            let chain = certs("cluster.tls.cert", cert)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key.pem).map_err(|e| {
                format!(
                    "could not use cluster.tls.key file {}: {e}",
                    key.path.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("could not use cluster.tls.cert with cluster.tls.key: {e}"))
        }
    }
}

/// No client certificate (none configured), noting when the bus server asks for one: a server
/// that requires one then ends the handshake with an alert the client reports as "IO error".
#[derive(Debug)]
struct NoClientCert {
    /// Where the note goes.
    refused: Refused,
}

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        note(
            &self.refused,
            "the bus server asked for a client certificate and cluster.tls.cert / cluster.tls.key name none".into(),
        );
        None
    }

    /// True so that `resolve` is asked (and notes the request); it answers with no certificate.
    fn has_certs(&self) -> bool {
        true
    }
}

/// The standard (webpki) check of the bus server's certificate, noting why it refused one.
#[derive(Debug)]
struct Noting {
    /// Does the checking.
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    /// Where the reason of the last refusal goes.
    refused: Refused,
}

impl rustls::client::danger::ServerCertVerifier for Noting {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|err| {
                note(
                    &self.refused,
                    format!("the bus server's certificate was refused: {err}"),
                )
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The credentials of a NATS URL's user info (percent-decoded).
#[derive(Debug, PartialEq, Eq)]
enum Auth {
    None,
    /// `nats://user:pass@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// Takes the user info out of `url`: async-nats 0.46 connects to a URL's host but ignores its
/// `user:pass@` (the server then refuses the connection as unauthorized), so it goes to the
/// client's options instead, and the address the client keeps (and may print) has none.
fn split_credentials(
    url: &str,
) -> Result<(String, Auth), Box<dyn std::error::Error + Send + Sync>> {
    let mut parsed = url::Url::parse(url)?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
    };
    let user = decode(parsed.username())?;
    let password = parsed.password().map(decode).transpose()?;
    let auth = match (user.is_empty(), password) {
        (true, None) => return Ok((url.to_owned(), Auth::None)),
        (_, Some(password)) => Auth::UserPassword(user, password),
        (false, None) => Auth::Token(user),
    };
    // Cannot fail for a URL with a host (one with user info has one).
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((parsed.to_string(), auth))
}

/// Connects (in the background), subscribes, and publishes from the queue until shutdown.
async fn run(addr: ServerAddr, options: ConnectOptions, refused: Refused, mut link: Link) {
    let shared = link.shared.clone();
    // The client, once `connect` returned it, for the event callback to read the server's
    // max_payload after each (re)connection.
    let client_cell: Arc<OnceLock<Client>> = Arc::new(OnceLock::new());
    // Bumped at every (re)connection: the prober then confirms the subscriptions.
    let (connected_tx, connected) = watch::channel(0u64);
    let events = {
        let shared = shared.clone();
        let client_cell = client_cell.clone();
        move |event: Event| {
            on_event(&shared, &client_cell, &connected_tx, &refused, event);
            std::future::ready(())
        }
    };
    let options = options
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(PING_EVERY)
        .subscription_capacity(INBOX)
        .reconnect_delay_callback(|attempts| match attempts {
            // The client counts the first attempt too, and waits before it.
            0 | 1 => Duration::ZERO,
            n => backoff(n as u64 - 1),
        })
        .event_callback(events);
    let client = tokio::select! {
        _ = link.shutdown.cancelled() => return,
        client = options.connect(addr) => client,
    };
    let client = match client {
        Ok(client) => client,
        // With retry_on_initial_connect, only a bad address gets here.
        Err(err) => {
            shared.set_down(&format!("could not start the NATS client: {err}"), None);
            return;
        }
    };
    let _ = client_cell.set(client.clone());
    let subscribed = async {
        let own = client.subscribe(link.own.clone()).await?;
        let all = client.subscribe(link.all().to_owned()).await?;
        Ok::<_, async_nats::SubscribeError>((own, all))
    };
    let (own, all) = match subscribed.await {
        Ok(subscribers) => subscribers,
        Err(err) => {
            shared.set_down(&format!("could not subscribe: {err}"), None);
            return;
        }
    };
    // The top bit tells probes from payloads.
    let id: u64 = uuid::Uuid::new_v4().as_u64_pair().0 & !PROBE_BIT;
    let (probes_tx, probes) = mpsc::channel(16);
    let all_subject = link.all().to_owned();
    let prober = Prober {
        client: &client,
        id: id | PROBE_BIT,
        own: &link.own,
        all: &all_subject,
        shared: &shared,
    };
    let receiver = Receiver {
        inbox: &link.inbox,
        shared: &shared,
        probe_id: id | PROBE_BIT,
        probes: probes_tx,
    };
    tokio::select! {
        _ = link.shutdown.cancelled() => {}
        () = publish(&client, id, &mut link.queue, &shared) => {}
        () = receiver.run(own, all) => {}
        () = prober.run(connected, probes) => {}
    }
    flush(&client, id, &mut link).await;
    shared.set_down(&"shutting down", None);
}

/// Maps a client event to the bus state and logs. Connected is not up yet: the prober says when
/// the subscriptions are in place.
fn on_event(
    shared: &Shared,
    client: &OnceLock<Client>,
    connected: &watch::Sender<u64>,
    refused: &Refused,
    event: Event,
) {
    match event {
        Event::Connected => {
            // A note of this handshake (a client certificate asked for but optional) explains
            // no later failure.
            refused.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(client) = client.get() {
                let max = client.server_info().max_payload;
                if max > STAMP {
                    shared.max_payload.store(max - STAMP, Ordering::Relaxed);
                }
            }
            connected.send_modify(|generation| *generation += 1);
        }
        Event::Disconnected => shared.set_down(&"the connection closed", None),
        Event::Closed => shared.set_down(&"the client closed", None),
        Event::ClientError(err) => {
            let refused = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
            let why = match refused {
                Some(reason) => format!("could not connect: {err}: {reason}"),
                None => format!("could not connect: {err}"),
            };
            shared.set_down(&why, None);
        }
        Event::SlowConsumer(sid) => crate::log_scope::warn!(
            bus = shared.kind,
            sid,
            "bus payloads dropped by the NATS client: a subscription's queue is full"
        ),
        Event::ServerError(err) => {
            crate::log_scope::warn!(
                bus = shared.kind,
                "the NATS server reported an error: {err}"
            )
        }
        Event::LameDuckMode => crate::log_scope::warn!(
            bus = shared.kind,
            "the NATS server is shutting down (lame duck mode): it will be reconnected"
        ),
        Event::Draining => {}
    }
}

/// Confirms the subscriptions after each (re)connection before the bus counts as up.
///
/// The client reports "connected" before the server has processed the SUB operations it sends
/// next, and other nodes publish on their own connections: a node that counted itself up then
/// could miss what they send it. The prober publishes a probe on each of its two subjects and
/// marks the bus up once both came back (the server handles a connection's operations in order,
/// so the SUBs are in place), retrying every [`PROBE_WAIT`] while connected.
struct Prober<'a> {
    /// The connection the probes go out on and come back over.
    client: &'a Client,
    /// The stamp's publisher id of this node's probes ([`PROBE_BIT`] set).
    id: u64,
    /// This node's own subject.
    own: &'a str,
    /// The subject every node subscribes to.
    all: &'a str,
    /// Where the bus's up/down state is kept.
    shared: &'a Shared,
}

/// How long a probe may take to come back before it is sent again.
const PROBE_WAIT: Duration = Duration::from_secs(1);

impl Prober<'_> {
    async fn run(self, mut connected: watch::Receiver<u64>, mut seen: mpsc::Receiver<u64>) {
        let mut seq = 0u64;
        while connected.changed().await.is_ok() {
            while self.client.connection_state() == State::Connected {
                seq += 2;
                let sent = async {
                    self.client
                        .publish(self.own.to_owned(), stamped(self.id, seq, b""))
                        .await?;
                    self.client
                        .publish(self.all.to_owned(), stamped(self.id, seq + 1, b""))
                        .await
                };
                if sent.await.is_err() {
                    tokio::time::sleep(PROBE_WAIT).await;
                    continue;
                }
                let back = tokio::time::timeout(PROBE_WAIT, async {
                    let mut got = (false, false);
                    while got != (true, true) {
                        match seen.recv().await {
                            Some(s) if s == seq => got.0 = true,
                            Some(s) if s == seq + 1 => got.1 = true,
                            Some(_) => {}
                            None => return false,
                        }
                    }
                    true
                })
                .await;
                if back == Ok(true) && self.client.connection_state() == State::Connected {
                    self.shared
                        .set_up(&format!("subscribed to {} and {}", self.own, self.all));
                    break;
                }
            }
        }
    }
}

/// The stamped wire form of one payload.
fn stamped(id: u64, seq: u64, payload: &[u8]) -> Bytes {
    let mut wire = BytesMut::with_capacity(STAMP + payload.len());
    wire.put_u64(id);
    wire.put_u64(seq);
    wire.put_slice(payload);
    wire.freeze()
}

/// Hands queued payloads to the client, in order.
async fn publish(
    client: &Client,
    id: u64,
    queue: &mut mpsc::Receiver<super::bus::Outgoing>,
    shared: &Shared,
) {
    let mut seq = 0u64;
    while let Some(out) = queue.recv().await {
        seq += 1;
        match client
            .publish(out.subject, stamped(id, seq, &out.payload))
            .await
        {
            Ok(()) => {
                shared.counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => shared.lost(1, &format!("could not publish: {err}")),
        }
    }
}

/// At shutdown: hands what is still queued to the client and flushes, within [`FLUSH_GRACE`].
async fn flush(client: &Client, id: u64, link: &mut Link) {
    let mut n = 0;
    let flushed = tokio::time::timeout(FLUSH_GRACE, async {
        // Sequence numbers only order payloads within one merge window: a fresh range is fine.
        let mut seq = u64::MAX / 2;
        while let Ok(out) = link.queue.try_recv() {
            seq += 1;
            n += 1;
            client
                .publish(out.subject, stamped(id, seq, &out.payload))
                .await?;
        }
        client.flush().await?;
        Ok::<_, async_nats::Error>(())
    })
    .await;
    match flushed {
        Ok(Ok(())) => {
            link.shared
                .counters
                .published
                .fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(err)) => link.shared.lost(n as usize, &format!("at shutdown: {err}")),
        Err(_) => link.shared.lost(
            n as usize,
            &format!("at shutdown: not flushed in {FLUSH_GRACE:?}"),
        ),
    }
}

/// Merges the two subscriptions into the inbox, in each publisher's order.
struct Receiver<'a> {
    /// The cluster's bounded inbox; a payload that finds it full is dropped and counted.
    inbox: &'a mpsc::Sender<Bytes>,
    /// The counters and the bus's state.
    shared: &'a Shared,
    /// This node's probes' publisher id: those go to the prober.
    probe_id: u64,
    /// Sequence numbers of this node's probes that came back.
    probes: mpsc::Sender<u64>,
}

impl Receiver<'_> {
    async fn run(self, own: Subscriber, all: Subscriber) {
        let mut subscriptions = [own, all];
        let mut merge = Merge::default();
        loop {
            let mut drained = Vec::new();
            let side = if merge.is_idle() {
                // Nothing held back: wait for either subscription.
                let [own, all] = &mut subscriptions;
                let (side, message) = tokio::select! {
                    message = own.next() => (0, message),
                    message = all.next() => (1, message),
                };
                let Some(message) = message else {
                    // The client is gone (shutdown).
                    return;
                };
                drained.push(message.payload);
                side
            } else {
                merge.next_side()
            };
            // Unconstrained: tokio's cooperative budget would otherwise make a queue with
            // messages in it look empty after a while, and an early end of a drain breaks the
            // merge's premise.
            while let Some(Some(message)) =
                tokio::task::unconstrained(subscriptions[side].next()).now_or_never()
            {
                drained.push(message.payload);
            }
            for s in merge.drained(side, drained) {
                if s.publisher & PROBE_BIT == 0 {
                    self.shared.deliver(self.inbox, s.payload);
                } else if s.publisher == self.probe_id {
                    let _ = self.probes.try_send(s.seq);
                }
                // Other nodes' probes on `all`: not for this node.
            }
        }
    }
}

/// A payload as received: who published it, its sequence number, the payload without the stamp.
#[derive(Debug)]
struct Stamped {
    /// The publishing connection's random id.
    publisher: u64,
    /// Its sequence number at that publisher (restores the publisher's order across subjects).
    seq: u64,
    /// What the cluster reads.
    payload: Bytes,
}

/// Restores per-publisher order across two queues filled, in wire order, by one reader.
///
/// The reader (the NATS client) puts a publisher's payloads into the two queues in sequence
/// order. When a drain of one queue finds payload `p`, every payload that preceded `p` on the
/// wire is already in the other queue (it was put there first), so the next drain of the other
/// queue takes it. Hence the drains alternate between the queues, and after each drain the
/// payloads of the drain before it are complete (nothing earlier can still arrive) — as are the
/// ones of the current drain that precede, per publisher, one of those. Those are released in
/// sequence order; the rest of the current drain waits for the next drain (which may be empty:
/// an empty drain completes the one before it).
#[derive(Debug, Default)]
struct Merge {
    /// The previous drain's payloads not yet released, and which queue it drained.
    held: Vec<Stamped>,
    /// The queue the previous drain took from.
    held_side: usize,
}

impl Merge {
    /// Nothing held back: the next drain may wait for either queue.
    fn is_idle(&self) -> bool {
        self.held.is_empty()
    }

    /// The queue to drain next while payloads are held back: the other one.
    fn next_side(&self) -> usize {
        1 - self.held_side
    }

    /// Takes one drain (possibly empty) of queue `side`; returns the payloads now released.
    fn drained(&mut self, side: usize, payloads: Vec<Bytes>) -> Vec<Stamped> {
        let mut released = std::mem::take(&mut self.held);
        // The highest sequence number per publisher among the complete payloads.
        let mut highest: Vec<(u64, u64)> = Vec::new();
        for s in &released {
            match highest.iter_mut().find(|(p, _)| *p == s.publisher) {
                Some((_, seq)) => *seq = (*seq).max(s.seq),
                None => highest.push((s.publisher, s.seq)),
            }
        }
        for payload in payloads {
            let Some(s) = unstamp(payload) else { continue };
            let complete = highest
                .iter()
                .any(|&(p, seq)| p == s.publisher && s.seq < seq);
            if complete {
                released.push(s);
            } else {
                self.held.push(s);
            }
        }
        self.held_side = side;
        // Stable: one publisher's payloads by sequence; publishers' relative order is free.
        released.sort_by_key(|s| (s.publisher, s.seq));
        released
    }
}

/// Splits the stamp off a received payload; None (logged) for one no Pier bus sent.
fn unstamp(mut wire: Bytes) -> Option<Stamped> {
    if wire.len() < STAMP {
        crate::log_scope::warn!(
            bus = "nats",
            len = wire.len(),
            "bus message ignored: too short to carry a Pier stamp (another client publishing on Pier's subjects?)"
        );
        return None;
    }
    let publisher = wire.get_u64();
    let seq = wire.get_u64();
    Some(Stamped {
        publisher,
        seq,
        payload: wire,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let split = |url: &str| split_credentials(url).unwrap();
        assert_eq!(
            split("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".into(), Auth::None)
        );
        assert_eq!(
            split("tls://app:p%40ss@bus.example:4443"),
            (
                "tls://bus.example:4443".into(),
                Auth::UserPassword("app".into(), "p@ss".into())
            )
        );
        assert_eq!(
            split("nats://s3cret@h:4222"),
            ("nats://h:4222".into(), Auth::Token("s3cret".into()))
        );
        assert!(split_credentials("nats://h:notaport").is_err());
    }

    fn wire(publisher: u64, seq: u64) -> Bytes {
        stamped(publisher, seq, format!("{publisher}:{seq}").as_bytes())
    }

    fn text(released: Vec<Stamped>) -> Vec<String> {
        released
            .into_iter()
            .map(|s| String::from_utf8(s.payload.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_later_payload_on_the_other_queue_waits_for_the_earlier_one() {
        let mut merge = Merge::default();
        // The reader put 1:1 in queue 0, then 1:2 in queue 1; a drain of queue 1 finds 1:2
        // (queue 0 was drained, empty, just before 1:1 arrived).
        assert!(merge.drained(1, vec![wire(1, 2)]).is_empty());
        // The drain of queue 0 finds 1:1: both are released, in order.
        assert_eq!(text(merge.drained(0, vec![wire(1, 1)])), ["1:1", "1:2"]);
        assert!(merge.is_idle());
    }

    #[test]
    fn an_empty_drain_releases_what_was_held() {
        let mut merge = Merge::default();
        assert!(merge.drained(0, vec![wire(7, 1), wire(7, 2)]).is_empty());
        assert!(!merge.is_idle());
        assert_eq!(merge.next_side(), 1);
        assert_eq!(text(merge.drained(1, vec![])), ["7:1", "7:2"]);
        assert!(merge.is_idle());
    }

    #[test]
    fn later_payloads_of_the_current_drain_are_held() {
        let mut merge = Merge::default();
        assert!(merge.drained(0, vec![wire(1, 3), wire(2, 1)]).is_empty());
        // Queue 1 holds 1:2 (before 1:3: released with it) and 1:4 (after: held, as a 1:5 may
        // still come on queue 0) and 2:2 (publisher 2's highest complete is 1: held).
        let released = text(merge.drained(1, vec![wire(1, 2), wire(1, 4), wire(2, 2)]));
        assert_eq!(released, ["1:2", "1:3", "2:1"]);
        assert_eq!(text(merge.drained(0, vec![wire(1, 5)])), ["1:4", "2:2"]);
        assert_eq!(text(merge.drained(1, vec![])), ["1:5"]);
    }

    #[test]
    fn foreign_messages_are_ignored() {
        let mut merge = Merge::default();
        assert!(merge
            .drained(0, vec![Bytes::from_static(b"short")])
            .is_empty());
        assert!(merge.is_idle());
    }
}
