//! Cluster-wide questions: `pier.List`, `Count`, `Groups` and `Info` across the nodes.
//!
//! The asker publishes one [`Query`] on `All` (or, for one connection, to its owner's channel)
//! under a request id; every node answers from its own registry to the asker's channel, in
//! parts of bounded size, the last one marked; the asker adds its own answer and waits for the
//! nodes it knew alive when it asked, at most `cluster.request_timeout`. Rows carry their node.
//! A node that did not answer is never silently missing: `pier.List` names it in `missing`;
//! `pier.Count` and `pier.Groups`, whose answers have no room for that, fail with an error
//! naming it. While the bus is down every cluster-wide question fails at once.
//!
//! What is gathered is bounded: parts are taken only from the nodes asked (each until its last
//! part; the nodes asked are the node table's, itself bounded by `cluster.max_nodes`), and at most
//! [`MAX_ANSWER_BYTES`] from each; a node whose answer is larger is dropped and named as not
//! answering. Nothing is kept past `cluster.request_timeout`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use crate::log_scope::{debug, warn};
use serde::Serialize;
use tokio::sync::oneshot;

use super::bus::Channel;
use super::envelope::{self, Answer, Msg, Query};
use super::{node, Cluster, ClusterError};
use crate::registry::{ConnInfo, Filter, GroupInfo, Registry};

/// `pier.List` across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListPage {
    /// How many connections the filter selects on the nodes that answered.
    pub total: usize,
    /// This page of them, ordered by connect time then uuid across nodes, each with its node.
    pub connections: Vec<ConnInfo>,
    /// The nodes known alive that did not answer in time (their connections are not counted).
    pub missing: Vec<String>,
}

/// Most bytes of bus messages taken from one node for one question. Far above a legitimate
/// answer to any question `pier.*` asks with its limits (1,000 rows of at most ~9 KiB), except a
/// `pier.List` with an offset deep in a node of hundreds of thousands of connections: such a
/// node is reported as not answering rather than filling memory.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Whose answers a question waits for.
#[derive(Debug)]
enum Want {
    /// These nodes' (every node known alive when it was asked).
    Nodes(HashSet<String>),
    /// The one node with this tag (the owner of a connection).
    Owner(u32),
}

/// A question waiting for answers.
#[derive(Debug)]
pub(super) struct Pending {
    /// The nodes whose last parts complete it.
    want: Want,
    /// Nodes whose last part arrived.
    answered: HashSet<String>,
    /// Nodes whose answer passed [`MAX_ANSWER_BYTES`]: dropped, and named as not answering.
    dropped: HashSet<String>,
    /// Bytes received so far from each node asked.
    bytes: HashMap<String, usize>,
    /// Every part so far, with its node.
    parts: Vec<(String, Answer)>,
    /// Wakes the asker when complete.
    done: Option<oneshot::Sender<()>>,
}

impl Pending {
    /// Waiting for `want`; `done` wakes the asker.
    fn new(want: Want, done: oneshot::Sender<()>) -> Pending {
        Pending {
            want,
            answered: HashSet::new(),
            dropped: HashSet::new(),
            bytes: HashMap::new(),
            parts: Vec::new(),
            done: Some(done),
        }
    }
}

/// What came back.
#[derive(Debug)]
struct Gathered {
    /// Every part, with its node.
    parts: Vec<(String, Answer)>,
    /// Nodes asked that did not finish their answer in time.
    missing: Vec<String>,
}

impl Cluster {
    /// `pier.List`: `limit` connections from `offset`, across the cluster.
    pub async fn list(
        &self,
        registry: &Registry,
        filter: Filter<'_>,
        offset: usize,
        limit: usize,
    ) -> Result<ListPage, ClusterError> {
        let upto = offset.saturating_add(limit);
        let asked = self
            .ask(
                None,
                Query::List {
                    server: filter.server.map(str::to_owned),
                    group: filter.group.map(str::to_owned),
                    upto,
                },
            )
            .await?;
        let (total, mut rows) = registry.list(filter, 0, upto);
        let mut totals: HashMap<String, usize> = HashMap::new();
        let me = &self.node().id;
        totals.insert(me.clone(), total);
        for row in &mut rows {
            row.node = Some(me.clone());
        }
        for (node, answer) in asked.parts {
            if let Answer::List {
                total,
                rows: theirs,
            } = answer
            {
                totals.insert(node, total);
                rows.extend(theirs);
            }
        }
        rows.sort_by(|a, b| {
            a.connected_at
                .total_cmp(&b.connected_at)
                .then_with(|| a.uuid.cmp(&b.uuid))
        });
        Ok(ListPage {
            total: totals.values().sum(),
            connections: rows.into_iter().skip(offset).take(limit).collect(),
            missing: asked.missing,
        })
    }

    /// `pier.Count` across the cluster; an error when a node did not answer.
    pub async fn count(
        &self,
        registry: &Registry,
        filter: Filter<'_>,
    ) -> Result<usize, ClusterError> {
        let asked = self
            .ask(
                None,
                Query::Count {
                    server: filter.server.map(str::to_owned),
                    group: filter.group.map(str::to_owned),
                },
            )
            .await?;
        self.complete("count the connections", &asked)?;
        let mut n = registry.count(filter);
        for (_, answer) in asked.parts {
            if let Answer::Count(theirs) = answer {
                n += theirs;
            }
        }
        Ok(n)
    }

    /// `pier.Groups` across the cluster (member counts summed); an error when a node did not
    /// answer.
    pub async fn groups(
        &self,
        registry: &Registry,
        server: Option<&str>,
    ) -> Result<Vec<GroupInfo>, ClusterError> {
        let asked = self
            .ask(
                None,
                Query::Groups {
                    server: server.map(str::to_owned),
                },
            )
            .await?;
        self.complete("list the groups", &asked)?;
        let mut merged: BTreeMap<String, usize> = BTreeMap::new();
        let theirs = asked
            .parts
            .into_iter()
            .flat_map(|(_, answer)| match answer {
                Answer::Groups(groups) => groups,
                _ => Vec::new(),
            });
        for g in registry.groups(server).into_iter().chain(theirs) {
            *merged.entry(g.group).or_default() += g.members;
        }
        Ok(merged
            .into_iter()
            .map(|(group, members)| GroupInfo { group, members })
            .collect())
    }

    /// `pier.Info`: asks the owner of `uuid` only. `None` when no node owns it now (no live
    /// node has its tag); an error when its node did not answer in time.
    pub async fn info(
        &self,
        registry: &Registry,
        uuid: &str,
    ) -> Result<Option<ConnInfo>, ClusterError> {
        let Some(owner) = self.remote_owner(uuid) else {
            return Ok(registry.info(uuid).map(|mut info| {
                info.node = Some(self.node().id.clone());
                info
            }));
        };
        if self.gone(owner) {
            // Its node is gone (and its connections with it), or it never existed.
            return Ok(None);
        }
        let node = self
            .peers_lock()
            .by_tag(owner)
            .map_or_else(|| node::channel(owner), str::to_owned);
        let asked = self
            .ask(
                Some(owner),
                Query::Info {
                    uuid: uuid.to_owned(),
                },
            )
            .await?;
        for (_, answer) in asked.parts {
            if let Answer::Info(info) = answer {
                return Ok(info);
            }
        }
        self.inner.metrics.cluster_failure("query", "no_answer");
        Err(ClusterError::NoAnswer {
            what: "look the connection up",
            nodes: node,
            timeout: self.inner.request_timeout,
        })
    }

    /// An error naming the nodes that did not answer, if any.
    fn complete(&self, what: &'static str, asked: &Gathered) -> Result<(), ClusterError> {
        if asked.missing.is_empty() {
            return Ok(());
        }
        Err(ClusterError::NoAnswer {
            what,
            nodes: asked.missing.join(", "),
            timeout: self.inner.request_timeout,
        })
    }

    /// Asks `query` of every node known alive (`owner` `None`) or of the node with tag `owner`,
    /// and gathers the answers until all are in or `cluster.request_timeout` passed.
    async fn ask(&self, owner: Option<u32>, query: Query) -> Result<Gathered, ClusterError> {
        let inner = &self.inner;
        if !inner.bus.is_up() {
            let e = ClusterError::Down {
                bus: inner.bus.kind(),
            };
            self.failed("query", "bus_down", &e);
            return Err(e);
        }
        let want = match owner {
            Some(tag) => Want::Owner(tag),
            None => {
                let ids: HashSet<String> = self.peers().into_iter().collect();
                if ids.is_empty() {
                    // Alone (as far as anyone said hello): nothing to wait for.
                    return Ok(Gathered {
                        parts: Vec::new(),
                        missing: Vec::new(),
                    });
                }
                Want::Nodes(ids)
            }
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, wait) = oneshot::channel();
        self.pending_lock().insert(id, Pending::new(want, done));
        let to = match owner {
            Some(tag) => Channel::Node(node::channel(tag)),
            None => Channel::All,
        };
        if let Err(e) = self.publish(to, Msg::Query { id, query }) {
            self.pending_lock().remove(&id);
            return Err(e);
        }
        let _ = tokio::time::timeout(inner.request_timeout, wait).await;
        let Some(pending) = self.pending_lock().remove(&id) else {
            return Ok(Gathered {
                parts: Vec::new(),
                missing: Vec::new(),
            });
        };
        let mut missing: Vec<String> = match pending.want {
            Want::Nodes(want) => want.difference(&pending.answered).cloned().collect(),
            // Said by the caller, which names the owner.
            Want::Owner(_) => Vec::new(),
        };
        missing.sort_unstable();
        for node in &missing {
            inner.metrics.cluster_failure("query", "no_answer");
            debug!(%node, request = id, "cluster query: no answer in time");
        }
        Ok(Gathered {
            parts: pending.parts,
            missing,
        })
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One part of an answer to request `id` arrived from `from`, in a bus message of `size`
    /// bytes.
    pub(super) fn gathered(&self, from: &str, id: u64, answer: Answer, last: bool, size: usize) {
        let mut pending = self.pending_lock();
        let Some(p) = pending.get_mut(&id) else {
            debug!(node = %from, request = id, "cluster query: answer after the timeout dropped");
            return;
        };
        let asked = match &p.want {
            Want::Nodes(want) => want.contains(from),
            Want::Owner(tag) => node::tag(from) == *tag,
        };
        if !asked || p.answered.contains(from) || p.dropped.contains(from) {
            debug!(node = %from, request = id, "cluster query: a part from a node not asked, or after its last part, dropped");
            return;
        }
        let bytes = p.bytes.entry(from.to_owned()).or_default();
        *bytes = bytes.saturating_add(size);
        if *bytes > MAX_ANSWER_BYTES {
            p.parts.retain(|(node, _)| node != from);
            p.dropped.insert(from.to_owned());
            self.inner.metrics.cluster_failure("query", "too_large");
            warn!(node = %from, request = id, max = MAX_ANSWER_BYTES, "cluster query: a node's answer is larger than any question asks for; dropped, the node is named as not answering");
        } else {
            p.parts.push((from.to_owned(), answer));
            if !last {
                return;
            }
            p.answered.insert(from.to_owned());
        }
        let complete = match &p.want {
            Want::Nodes(want) => want
                .iter()
                .all(|n| p.answered.contains(n) || p.dropped.contains(n)),
            Want::Owner(_) => true,
        };
        if complete {
            if let Some(done) = p.done.take() {
                let _ = done.send(());
            }
        }
    }

    /// Answers node `from`'s question `id` from the local registry, to its channel.
    pub(super) fn answer(&self, registry: &Registry, from: &str, id: u64, query: Query) {
        let me = &self.node().id;
        let mark = |mut info: ConnInfo| {
            info.node = Some(me.clone());
            info
        };
        let answers: Vec<Answer> = match query {
            Query::List {
                server,
                group,
                upto,
            } => {
                let filter = Filter {
                    server: server.as_deref(),
                    group: group.as_deref(),
                };
                let (total, rows) = registry.list(filter, 0, upto);
                let rows = rows.into_iter().map(mark).collect();
                envelope::parts(rows, envelope::row_size)
                    .into_iter()
                    .map(|rows| Answer::List { total, rows })
                    .collect()
            }
            Query::Count { server, group } => vec![Answer::Count(registry.count(Filter {
                server: server.as_deref(),
                group: group.as_deref(),
            }))],
            Query::Groups { server } => {
                envelope::parts(registry.groups(server.as_deref()), |g| g.group.len() + 16)
                    .into_iter()
                    .map(Answer::Groups)
                    .collect()
            }
            Query::Info { uuid } => vec![Answer::Info(registry.info(&uuid).map(mark))],
        };
        let to = node::channel(node::tag(from));
        let n = answers.len();
        for (i, answer) in answers.into_iter().enumerate() {
            let msg = Msg::Reply {
                id,
                answer,
                last: i + 1 == n,
            };
            if self.publish(Channel::Node(to.clone()), msg).is_err() {
                // Counted and logged; the asker reports this node as not answering.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;
    use crate::ops::Metrics;

    /// A cluster whose bus never connects (nothing listens on port 1): enough to gather by hand.
    fn cluster() -> (super::super::Handle, Registry) {
        let registry = Registry::new();
        let config = ClusterConfig {
            bus: "redis://127.0.0.1:1".into(),
            tls: None,
            node: Some("me".into()),
            prefix: "t".into(),
            request_timeout: std::time::Duration::from_secs(1),
            max_nodes: 8,
        };
        let handle = Cluster::start(&config, &registry, Metrics::off()).unwrap();
        (handle, registry)
    }

    fn pending(cluster: &Cluster, id: u64, want: Want) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        cluster.pending_lock().insert(id, Pending::new(want, done));
        wait
    }

    #[tokio::test]
    async fn only_the_nodes_asked_add_parts_each_up_to_its_bound() {
        let (handle, _registry) = cluster();
        let c = &handle.cluster;
        let want = Want::Nodes(["a".to_owned(), "b".to_owned()].into());
        let mut wait = pending(c, 1, want);
        // Parts from nodes not asked, however many ids, are not kept.
        for i in 0..1000 {
            c.gathered(&format!("x{i}"), 1, Answer::Count(1), true, 10);
        }
        c.gathered("a", 1, Answer::Count(1), false, 10);
        c.gathered("a", 1, Answer::Count(2), true, 10);
        // After its last part, a node adds nothing.
        c.gathered("a", 1, Answer::Count(3), true, 10);
        // b's answer grows past the bound: dropped; b counts as not answering.
        c.gathered("b", 1, Answer::Count(4), false, MAX_ANSWER_BYTES);
        assert!(wait.try_recv().is_err(), "b is not done yet");
        c.gathered("b", 1, Answer::Count(5), false, 1);
        c.gathered("b", 1, Answer::Count(6), true, 1);
        assert!(wait.try_recv().is_ok(), "complete: a answered, b dropped");
        let p = c.pending_lock().remove(&1).unwrap();
        let parts: Vec<(&str, &Answer)> = p.parts.iter().map(|(n, a)| (n.as_str(), a)).collect();
        assert_eq!(parts, [("a", &Answer::Count(1)), ("a", &Answer::Count(2))]);
        assert_eq!(p.answered, HashSet::from(["a".to_owned()]));
        assert_eq!(p.dropped, HashSet::from(["b".to_owned()]));

        // A question to one owner takes parts from that owner only.
        let mut wait = pending(c, 2, Want::Owner(node::tag("o")));
        c.gathered("p", 2, Answer::Count(1), true, 10);
        assert!(wait.try_recv().is_err());
        c.gathered("o", 2, Answer::Count(7), true, 10);
        assert!(wait.try_recv().is_ok());
        let p = c.pending_lock().remove(&2).unwrap();
        assert_eq!(p.parts.len(), 1);
        handle.stop(std::time::Duration::from_secs(5)).await;
    }
}
