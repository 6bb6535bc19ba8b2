//! The Redis transport (the `redis` crate): PUBLISH on one multiplexed connection, SUBSCRIBE on a
//! dedicated pub/sub connection, one background task keeping both alive.
//!
//! Order: the task takes payloads from the one queue in order and writes them as pipelines of up
//! to [`BATCH`] PUBLISH commands, awaiting each pipeline's replies before the next, on one
//! connection; Redis runs one client's commands in order and writes a subscriber's messages in
//! the order it published them, across channels, so the one pub/sub stream keeps that order.
//!
//! Failure: when either connection fails (the subscriber's stream ends, a pipeline errs or gets
//! no answer, the periodic PING gets none), both are dropped, the bus is marked down, what was
//! queued is counted lost, and the task reconnects with [`backoff`] and subscribes again.
//! Channels are global in Redis (the `/db` of the URL does not separate them): the prefix does.

use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{AsyncConnectionConfig, Client, ClientTlsConfig, TlsCertificates};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::config::BusTls;

use super::bus::{backoff, BusError, Link, Outgoing, Shared, BATCH, FLUSH_GRACE};

/// Connecting (TCP and the handshake) may take this long before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A command (a pipeline, SUBSCRIBE, PING) may wait this long for its reply; longer means the
/// server is stuck or unreachable, and the connection is replaced.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the pub/sub connection is pinged, so a peer that vanished without closing the TCP
/// connection is noticed even when no payload flows.
const PING_EVERY: Duration = Duration::from_secs(10);

/// Checks the URL (and the `cluster.tls` files, as read at load) and starts the task that keeps
/// the connections. `rediss://` without `tls` trusts the system's roots; the URL's `user:pass@` is
/// the client's AUTH (the client sends it on every connection).
pub(super) fn start(
    url: &str,
    tls: Option<&BusTls>,
    link: Link,
    tracker: &TaskTracker,
) -> Result<(), BusError> {
    let client = match tls {
        None => Client::open(url).map_err(|err| BusError::url(url, err))?,
        Some(tls) => {
            let client_tls = tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.pem.clone(),
                client_key: key.pem.clone(),
            });
            let root_cert = tls.ca.as_ref().map(|ca| ca.pem.clone());
            let certificates = TlsCertificates {
                client_tls,
                root_cert,
            };
            Client::build_with_tls(url, certificates)
                .map_err(|err| BusError::tls(url, format!("could not use cluster.tls: {err}")))?
        }
    };
    tracker.spawn(run(client, link));
    Ok(())
}

/// Why one connection's session ended.
enum Ended {
    /// Every [`super::Bus`] handle was dropped: nothing more can be published.
    Closed,
    /// The connection failed: reconnect.
    Failed(String),
    /// Shutdown.
    Shutdown,
}

/// Connect, serve until the connection fails, reconnect; until shutdown.
async fn run(client: Client, mut link: Link) {
    let mut attempt = 0u64;
    loop {
        let connected = tokio::select! {
            _ = link.shutdown.cancelled() => return,
            connected = connect(&client, &link) => connected,
        };
        let (mut publisher, sink, stream) = match connected {
            Ok(connections) => connections,
            Err(why) => {
                attempt += 1;
                let delay = backoff(attempt);
                link.shared.set_down(&why, Some(delay));
                link.discard_queued(&"the bus was down");
                tokio::select! {
                    _ = link.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        link.shared
            .set_up(&format!("subscribed to {} and {}", link.own, link.all()));
        let ended = tokio::select! {
            _ = link.shutdown.cancelled() => Ended::Shutdown,
            ended = publish(&mut publisher, &mut link.queue, &link.shared) => ended,
            ended = receive(stream, &link.inbox, &link.shared) => ended,
            ended = keepalive(sink) => ended,
        };
        match ended {
            Ended::Closed => return,
            Ended::Shutdown => {
                flush(&mut publisher, &mut link).await;
                return;
            }
            Ended::Failed(why) => {
                attempt = 1;
                let delay = backoff(attempt);
                link.shared.set_down(&why, Some(delay));
                link.discard_queued(&why);
                tokio::select! {
                    _ = link.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Opens the publishing connection and the pub/sub connection, and subscribes.
async fn connect(
    client: &Client,
    link: &Link,
) -> Result<(MultiplexedConnection, PubSubSink, PubSubStream), String> {
    // Named in a failure (an ACL user's wrong password says which user); never the password.
    let user = match client.get_connection_info().redis_settings().username() {
        Some(user) => format!(" as user {user}"),
        None => String::new(),
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(REPLY_TIMEOUT));
    let publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|err| format!("could not connect{user}: {err}"))?;
    let pubsub = timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| {
            format!("could not connect the subscriber{user}: no answer in {CONNECT_TIMEOUT:?}")
        })?
        .map_err(|err| format!("could not connect the subscriber{user}: {err}"))?;
    let (mut sink, stream) = pubsub.split();
    timeout(
        REPLY_TIMEOUT,
        sink.subscribe(&[link.own.as_str(), link.all()]),
    )
    .await
    .map_err(|_| format!("could not subscribe: no answer in {REPLY_TIMEOUT:?}"))?
    .map_err(|err| format!("could not subscribe: {err}"))?;
    Ok((publisher, sink, stream))
}

/// Writes what is queued, in order, a pipeline at a time.
async fn publish(
    publisher: &mut MultiplexedConnection,
    queue: &mut mpsc::Receiver<Outgoing>,
    shared: &Shared,
) -> Ended {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if queue.recv_many(&mut batch, BATCH).await == 0 {
            return Ended::Closed;
        }
        if let Err(why) = write(publisher, &batch, REPLY_TIMEOUT).await {
            shared.lost(batch.len(), &why);
            return Ended::Failed(why);
        }
        shared
            .counters
            .published
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        batch.clear();
    }
}

/// One pipeline of PUBLISH commands, its replies awaited (at most `limit`).
async fn write(
    publisher: &mut MultiplexedConnection,
    batch: &[Outgoing],
    limit: Duration,
) -> Result<(), String> {
    let mut pipe = ::redis::pipe();
    for out in batch {
        pipe.cmd("PUBLISH")
            .arg(out.subject.as_str())
            .arg(&out.payload[..])
            .ignore();
    }
    match timeout(limit, pipe.query_async::<()>(publisher)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("could not publish: {err}")),
        Err(_) => Err(format!("could not publish: no answer in {limit:?}")),
    }
}

/// Hands every received message to the cluster until the pub/sub connection ends.
async fn receive(mut stream: PubSubStream, inbox: &mpsc::Sender<Bytes>, shared: &Shared) -> Ended {
    while let Some(message) = stream.next().await {
        shared.deliver(inbox, Bytes::copy_from_slice(message.get_payload_bytes()));
    }
    Ended::Failed("the subscriber's connection closed".to_owned())
}

/// PINGs the pub/sub connection every [`PING_EVERY`]; ends when a PING gets no answer.
async fn keepalive(mut sink: PubSubSink) -> Ended {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match timeout(REPLY_TIMEOUT, sink.ping::<()>()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Ended::Failed(format!("could not ping the subscriber: {err}")),
            Err(_) => {
                return Ended::Failed(format!(
                    "the subscriber did not answer a PING in {REPLY_TIMEOUT:?}"
                ))
            }
        }
    }
}

/// At shutdown: publishes what is still queued, within [`FLUSH_GRACE`].
async fn flush(publisher: &mut MultiplexedConnection, link: &mut Link) {
    let mut rest = Vec::new();
    while let Ok(out) = link.queue.try_recv() {
        rest.push(out);
    }
    if rest.is_empty() {
        return;
    }
    let n = rest.len();
    match write(publisher, &rest, FLUSH_GRACE).await {
        Ok(()) => {
            link.shared
                .counters
                .published
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Err(why) => link.shared.lost(n, &format!("at shutdown: {why}")),
    }
}
