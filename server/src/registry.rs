//! Live connections by uuid, their groups, and the push operations on them (extension `push`, RPC).
//!
//! Every connection registers a `Link` (its outbound queue and stats, see `connection`) when it
//! is accepted and leaves when its socket closes, before its `CLOSE` event; its group memberships
//! leave with it. Operations come from two places: command frames a worker writes during an event
//! (applied by the pool in the order written) and RPC methods (`rpc`). Both go through the same
//! five methods ([`Registry::send`], [`Registry::close`], [`Registry::join`], [`Registry::leave`],
//! [`Registry::broadcast`]), which take uuids, group and server names as text and data as shared
//! bytes. On a single instance they answer from local state. In a cluster (`cluster`, attached
//! at start) an op on a uuid another node owns (its tag says which) is forwarded to that node,
//! which applies it with the same methods' local halves (`*_local`); a broadcast is applied here
//! and published once for the others. list/count/info/groups stay local here: the RPC methods
//! ask the cluster for the cluster-wide answers. Nothing here waits: an op locks the registry
//! briefly and appends to outbound queues (or queues one bus message); the connections' own
//! tasks do the writing.
//!
//! One `RwLock` guards the maps: connects, disconnects, joins and leaves take it for writing,
//! everything else for reading, each for a bounded, short time (a broadcast holds the read lock
//! while it appends one shared `Bytes` to each member's queue: no copy, no syscall).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::UNIX_EPOCH;

use crate::log_scope::{debug, error, warn};
use bytes::Bytes;
use pier_protocol::command::Command;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cluster::envelope::Msg;
use crate::cluster::{Cluster, ClusterError};
use crate::connection::Link;

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 128;
/// Most groups one connection may be in at once.
pub const MAX_GROUPS_PER_CONNECTION: usize = 64;

/// Why an operation was refused (the caller's input) or, in a cluster, could not reach the other
/// nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The connection is on another node and the bus could not take the operation.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A broadcast reached this node's connections, but not the other nodes.
    #[error("could not reach every node: queued on {queued} connections of this node")]
    Partial {
        /// Connections of this node that took it.
        queued: usize,
        /// Why the others did not.
        source: ClusterError,
    },
    /// The group name is empty or longer than [`MAX_GROUP_NAME`] bytes.
    #[error("could not use group name of {0} bytes: it must be 1..={MAX_GROUP_NAME} bytes")]
    GroupName(usize),
    /// The connection is already in [`MAX_GROUPS_PER_CONNECTION`] groups.
    #[error(
        "could not join group: connection {0} is already in {MAX_GROUPS_PER_CONNECTION} groups"
    )]
    TooManyGroups(String),
}

/// Which connections a listing, count or broadcast is about.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// Only this server's connections.
    pub server: Option<&'a str>,
    /// Only this group's members.
    pub group: Option<&'a str>,
}

/// A connection as `pier.List` / `pier.Info` describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// UUID v4 text.
    pub uuid: String,
    /// `tcp.servers` key.
    pub server: String,
    /// Client address, as in events.
    pub remote_addr: String,
    /// Unix time of the accept, in seconds.
    pub connected_at: f64,
    /// Packet bytes received (delimiters included).
    pub bytes_in: u64,
    /// Bytes written to the client (replies and pushes).
    pub bytes_out: u64,
    /// Its groups, sorted.
    pub groups: Vec<String>,
    /// In a cluster, the node that holds it (`cluster.node`); absent on a single instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A group and how many connections are in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The name.
    pub group: String,
    /// Its member count (of the server asked about, when one was).
    pub members: usize,
}

/// The registry handle; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// The maps, shared.
    inner: Arc<RwLock<Maps>>,
    /// The cluster this instance is part of, once attached (before any connection).
    cluster: Arc<OnceLock<Cluster>>,
    /// Set when the server shuts down ([`Registry::stop_connections`]): connections run the
    /// packets they already received and close.
    stopping: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Maps {
    /// Every live connection.
    conns: HashMap<Uuid, Entry>,
    /// Group name → its members. A group exists while it has members.
    groups: HashMap<Arc<str>, HashSet<Uuid>>,
}

#[derive(Debug)]
struct Entry {
    /// The connection's queue and stats.
    link: Arc<Link>,
    /// Its groups (names shared with `Maps::groups`); at most [`MAX_GROUPS_PER_CONNECTION`].
    groups: Vec<Arc<str>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than losing every connection, so a poisoned lock is used as it is.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes this registry part of `cluster`: new connections carry its node tag and operations
    /// on other nodes' connections are forwarded. Once, before the first connection.
    pub(crate) fn attach(&self, cluster: Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster, when this instance is part of one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// A new connection id: in a cluster, one that names this node as its owner.
    pub(crate) fn new_uuid(&self) -> Uuid {
        match self.cluster() {
            Some(cluster) => cluster.node().new_uuid(),
            None => Uuid::new_v4(),
        }
    }

    /// The cluster and the owner's tag when another node owns `uuid`.
    fn remote(&self, uuid: &str) -> Option<(&Cluster, u32)> {
        let cluster = self.cluster()?;
        Some((cluster, cluster.remote_owner(uuid)?))
    }

    /// Adds a connection that was just accepted.
    pub(crate) fn register(&self, link: Arc<Link>) {
        let uuid = link.uuid;
        self.write().conns.insert(
            uuid,
            Entry {
                link,
                groups: Vec::new(),
            },
        );
    }

    /// Shutdown: every connection stops reading, runs the packets it already received and
    /// closes. A connection checks [`Registry::stopping`] each time its task is woken while it
    /// waits for a packet (one atomic load, where polling a `CancellationToken` took a mutex
    /// around every packet); this wakes every registered one through its outbound queue's
    /// signal. One registered after this pass (the lock orders the two) sees the flag at its
    /// first check.
    pub(crate) fn stop_connections(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for entry in self.read().conns.values() {
            entry.link.wake();
        }
    }

    /// Whether the server is shutting down (see [`Registry::stop_connections`]).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Removes a connection (its socket is closing) and its group memberships.
    pub(crate) fn deregister(&self, uuid: &Uuid) {
        let mut maps = self.write();
        let Some(entry) = maps.conns.remove(uuid) else {
            return;
        };
        for group in entry.groups {
            leave_group(&mut maps.groups, &group, uuid);
        }
    }

    /// Applies one command a worker (`pid`) sent during an event (extension `push`). Never fails:
    /// an unknown uuid does nothing (`debug`), a refused op is the worker's error (logged with its
    /// pid), and the event goes on either way.
    pub(crate) fn apply(&self, command: &Command<'_>, pid: u32) {
        match command {
            Command::Send { uuid, data } => {
                let sent = match self.remote(uuid) {
                    // Encoded straight from the worker's frame: no copy into a Bytes first.
                    Some((cluster, owner)) => cluster.forward(
                        owner,
                        Msg::Send {
                            uuid: uuid.as_ref().into(),
                            data,
                        },
                    ),
                    None => Ok(self.send_local(uuid, Bytes::copy_from_slice(data))),
                };
                match sent {
                    Ok(true) => {}
                    Ok(false) => {
                        debug!(pid, target = %uuid, "send: no such connection (or it is closing)")
                    }
                    // Logged (rate-limited) and counted by the cluster.
                    Err(e) => debug!(pid, target = %uuid, error = %e, "send not forwarded"),
                }
            }
            Command::Close { uuid } => match self.close(uuid) {
                Ok(true) => {}
                Ok(false) => debug!(pid, target = %uuid, "close: no such connection"),
                Err(e) => debug!(pid, target = %uuid, error = %e, "close not forwarded"),
            },
            Command::Join { uuid, group } | Command::Leave { uuid, group } => {
                let join = matches!(command, Command::Join { .. });
                let op = if join { "join" } else { "leave" };
                match self.membership(uuid, group, join) {
                    Ok(true) => {}
                    Ok(false) => debug!(pid, target = %uuid, %group, "{op}: no such connection"),
                    Err(e @ RegistryError::Cluster(_)) => {
                        debug!(pid, target = %uuid, error = %e, "{op} not forwarded")
                    }
                    Err(e) => warn!(pid, target = %uuid, error = %e, "worker error: {op} refused"),
                }
            }
            Command::Broadcast {
                group,
                server,
                except,
                data,
            } => {
                let except: Vec<String> = except.iter().map(|u| u.to_string()).collect();
                let filter = Filter {
                    server: server.as_deref(),
                    group: group.as_deref(),
                };
                match self.broadcast(&Bytes::copy_from_slice(data), filter, &except) {
                    Ok(n) => debug!(pid, queued = n, "broadcast"),
                    Err(e @ RegistryError::Partial { .. }) => {
                        debug!(pid, error = %crate::ErrorChain(&e), "broadcast not forwarded")
                    }
                    Err(e) => warn!(pid, error = %e, "worker error: broadcast refused"),
                }
            }
            Command::IdleTimeout { .. } | Command::Starttls => {
                // The event's own connection applies these with the answer (the pool hands them
                // over in the reply); they never reach the registry.
                debug!(
                    pid,
                    "idle_timeout and starttls are applied by the event's connection"
                );
            }
            Command::Unknown { op, .. } => {
                error!(pid, %op, "worker error: unknown command op; ignored");
            }
            Command::Invalid { reason, .. } => {
                error!(pid, %reason, "worker error: invalid command; ignored");
            }
        }
    }

    /// Queues `data` for `uuid`: true when the connection exists and took the bytes, or, for
    /// another node's connection, when the message to that node is on its way (false when that
    /// node is gone).
    pub fn send(&self, uuid: &str, data: Bytes) -> Result<bool, RegistryError> {
        if let Some((cluster, owner)) = self.remote(uuid) {
            let msg = Msg::Send {
                uuid: uuid.into(),
                data: &data,
            };
            return Ok(cluster.forward(owner, msg)?);
        }
        Ok(self.send_local(uuid, data))
    }

    /// [`Registry::send`] on this node's connections only.
    pub(crate) fn send_local(&self, uuid: &str, data: Bytes) -> bool {
        let Some(uuid) = parse(uuid) else {
            return false;
        };
        let link = self.read().conns.get(&uuid).map(|e| e.link.clone());
        link.is_some_and(|link| link.push(data))
    }

    /// Closes `uuid` once what is queued for it is written: true when the connection existed
    /// (for another node's connection: when the message to that node is on its way).
    pub fn close(&self, uuid: &str) -> Result<bool, RegistryError> {
        if let Some((cluster, owner)) = self.remote(uuid) {
            return Ok(cluster.forward(owner, Msg::Close { uuid: uuid.into() })?);
        }
        Ok(self.close_local(uuid))
    }

    /// [`Registry::close`] on this node's connections only.
    pub(crate) fn close_local(&self, uuid: &str) -> bool {
        let Some(uuid) = parse(uuid) else {
            return false;
        };
        let link = self.read().conns.get(&uuid).map(|e| e.link.clone());
        link.is_some_and(|link| {
            link.request_close();
            true
        })
    }

    /// Adds `uuid` to `group`: true when the connection exists (already a member is fine), or,
    /// for another node's connection, when the message to that node is on its way (that node
    /// logs a refusal: too many groups).
    pub fn join(&self, uuid: &str, group: &str) -> Result<bool, RegistryError> {
        self.membership(uuid, group, true)
    }

    /// Removes `uuid` from `group`: true when the connection exists (not a member is fine), or,
    /// for another node's connection, when the message to that node is on its way.
    pub fn leave(&self, uuid: &str, group: &str) -> Result<bool, RegistryError> {
        self.membership(uuid, group, false)
    }

    /// [`Registry::join`] (`join`) or [`Registry::leave`]: the group's name checked, then sent to
    /// the node owning `uuid`, or applied here.
    fn membership(&self, uuid: &str, group: &str, join: bool) -> Result<bool, RegistryError> {
        check_group(group)?;
        if let Some((cluster, owner)) = self.remote(uuid) {
            let (uuid, group) = (uuid.into(), group.into());
            let msg = match join {
                true => Msg::Join { uuid, group },
                false => Msg::Leave { uuid, group },
            };
            return Ok(cluster.forward(owner, msg)?);
        }
        match join {
            true => self.join_local(uuid, group),
            false => self.leave_local(uuid, group),
        }
    }

    /// [`Registry::join`] on this node's connections only.
    pub(crate) fn join_local(&self, uuid: &str, group: &str) -> Result<bool, RegistryError> {
        self.change_groups(uuid, group, |entry, groups, id| {
            if entry.groups.iter().any(|g| &**g == group) {
                return Ok(());
            }
            if entry.groups.len() >= MAX_GROUPS_PER_CONNECTION {
                return Err(RegistryError::TooManyGroups(uuid.to_owned()));
            }
            let name: Arc<str> = match groups.get_key_value(group) {
                Some((name, _)) => name.clone(),
                None => Arc::from(group),
            };
            entry.groups.push(name.clone());
            groups.entry(name).or_default().insert(id);
            Ok(())
        })
    }

    /// [`Registry::leave`] on this node's connections only.
    pub(crate) fn leave_local(&self, uuid: &str, group: &str) -> Result<bool, RegistryError> {
        self.change_groups(uuid, group, |entry, groups, id| {
            if let Some(at) = entry.groups.iter().position(|g| &**g == group) {
                entry.groups.swap_remove(at);
                leave_group(groups, group, &id);
            }
            Ok(())
        })
    }

    /// Checks `group`'s name, then runs `change` on this node's connection `uuid` and the group
    /// table under the write lock: false when there is no such connection here.
    fn change_groups(
        &self,
        uuid: &str,
        group: &str,
        change: impl FnOnce(
            &mut Entry,
            &mut HashMap<Arc<str>, HashSet<Uuid>>,
            Uuid,
        ) -> Result<(), RegistryError>,
    ) -> Result<bool, RegistryError> {
        check_group(group)?;
        let Some(id) = parse(uuid) else {
            return Ok(false);
        };
        let mut guard = self.write();
        let Maps { conns, groups } = &mut *guard;
        let Some(entry) = conns.get_mut(&id) else {
            return Ok(false);
        };
        change(entry, groups, id)?;
        Ok(true)
    }

    /// Queues `data` on every connection `filter` selects but those in `except`; returns how many
    /// of this node's connections took it. In a cluster it is also published once for the other
    /// nodes, which apply it to theirs; when that fails, this node's connections have it and the
    /// error says so ([`RegistryError::Partial`]).
    pub fn broadcast(
        &self,
        data: &Bytes,
        filter: Filter<'_>,
        except: &[String],
    ) -> Result<usize, RegistryError> {
        let queued = self.broadcast_local(data, filter, except)?;
        if let Some(cluster) = self.cluster() {
            let msg = Msg::Broadcast {
                group: filter.group.map(Into::into),
                server: filter.server.map(Into::into),
                except: except.iter().map(|u| u.as_str().into()).collect(),
                data,
            };
            if let Err(source) = cluster.publish_all(msg) {
                return Err(RegistryError::Partial { queued, source });
            }
        }
        Ok(queued)
    }

    /// [`Registry::broadcast`] on this node's connections only.
    pub(crate) fn broadcast_local<S: AsRef<str>>(
        &self,
        data: &Bytes,
        filter: Filter<'_>,
        except: &[S],
    ) -> Result<usize, RegistryError> {
        if let Some(group) = filter.group {
            check_group(group)?;
        }
        let except: HashSet<Uuid> = except.iter().filter_map(|u| parse(u.as_ref())).collect();
        let maps = self.read();
        let mut queued = 0;
        maps.each(filter, |uuid, entry| {
            if !except.contains(uuid) && entry.link.push(data.clone()) {
                queued += 1;
            }
        });
        Ok(queued)
    }

    /// How many connections `filter` selects.
    pub fn count(&self, filter: Filter<'_>) -> usize {
        let maps = self.read();
        if filter.server.is_none() {
            return match filter.group {
                None => maps.conns.len(),
                Some(group) => maps.groups.get(group).map_or(0, HashSet::len),
            };
        }
        let mut n = 0;
        maps.each(filter, |_, _| n += 1);
        n
    }

    /// The connections `filter` selects, ordered by connect time then uuid: `limit` of them from
    /// `offset`, and how many there are in all.
    pub fn list(&self, filter: Filter<'_>, offset: usize, limit: usize) -> (usize, Vec<ConnInfo>) {
        let maps = self.read();
        let mut selected: Vec<(&Uuid, &Entry)> = Vec::new();
        maps.each(filter, |uuid, entry| selected.push((uuid, entry)));
        selected.sort_unstable_by(|a, b| {
            (a.1.link.connected_at, a.0).cmp(&(b.1.link.connected_at, b.0))
        });
        let total = selected.len();
        let page = selected
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, entry)| info(entry))
            .collect();
        (total, page)
    }

    /// One connection, when it exists.
    pub fn info(&self, uuid: &str) -> Option<ConnInfo> {
        let uuid = parse(uuid)?;
        self.read().conns.get(&uuid).map(info)
    }

    /// Every group with its member count (only members of `server`, when given; groups without
    /// any are left out), sorted by name.
    pub fn groups(&self, server: Option<&str>) -> Vec<GroupInfo> {
        let maps = self.read();
        let mut out: Vec<GroupInfo> = maps
            .groups
            .iter()
            .map(|(name, members)| GroupInfo {
                group: name.to_string(),
                members: match server {
                    None => members.len(),
                    Some(server) => members
                        .iter()
                        .filter(|u| maps.conns.get(u).is_some_and(|e| e.link.server() == server))
                        .count(),
                },
            })
            .filter(|g| g.members > 0)
            .collect();
        out.sort_unstable_by(|a, b| a.group.cmp(&b.group));
        out
    }
}

impl Maps {
    /// Calls `f` for every connection `filter` selects.
    fn each<'a>(&'a self, filter: Filter<'_>, mut f: impl FnMut(&'a Uuid, &'a Entry)) {
        let on_server = |entry: &Entry| filter.server.is_none_or(|s| entry.link.server() == s);
        match filter.group {
            Some(group) => {
                let Some(members) = self.groups.get(group) else {
                    return;
                };
                for uuid in members {
                    if let Some((uuid, entry)) = self.conns.get_key_value(uuid) {
                        if on_server(entry) {
                            f(uuid, entry);
                        }
                    }
                }
            }
            None => {
                for (uuid, entry) in &self.conns {
                    if on_server(entry) {
                        f(uuid, entry);
                    }
                }
            }
        }
    }
}

fn leave_group(groups: &mut HashMap<Arc<str>, HashSet<Uuid>>, group: &str, uuid: &Uuid) {
    if let Some(members) = groups.get_mut(group) {
        members.remove(uuid);
        if members.is_empty() {
            groups.remove(group);
        }
    }
}

fn check_group(group: &str) -> Result<(), RegistryError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME {
        return Err(RegistryError::GroupName(group.len()));
    }
    Ok(())
}

/// A uuid as text → its key; anything else is a connection that does not exist.
fn parse(uuid: &str) -> Option<Uuid> {
    Uuid::try_parse(uuid).ok()
}

fn info(entry: &Entry) -> ConnInfo {
    let link = &entry.link;
    let mut groups: Vec<String> = entry.groups.iter().map(|g| g.to_string()).collect();
    groups.sort_unstable();
    ConnInfo {
        uuid: link.uuid_text().to_owned(),
        server: link.server().to_owned(),
        remote_addr: link.remote_addr.clone(),
        connected_at: link
            .connected_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        bytes_in: link.bytes_in(),
        bytes_out: link.bytes_out(),
        groups,
        node: None,
    }
}
