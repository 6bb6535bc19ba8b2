//! The RPC methods: a name → handler table that decodes the argument in the request's codec,
//! runs the handler and encodes its result. Adding a service is one [`Methods::register`] call per
//! method (see [`Methods::standard`]); handlers are async and get the shared [`Context`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::codec::{Codec, CodecError};
use crate::cluster::ClusterError;
use crate::ops::Metrics;
use crate::pool::Pool;
use crate::registry::{ConnInfo, Filter, GroupInfo, Registry, RegistryError};

/// The version `rpc.Version` answers: Pier's own.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Default page size of `pier.List`.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest page size of `pier.List`.
pub const MAX_LIST_LIMIT: usize = 1000;

/// What a method could not do; the client gets the text in an error answer.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// The argument is not what the method takes (wrong type, missing key, unknown key).
    #[error(transparent)]
    Argument(#[from] CodecError),
    /// The argument decoded, but a value in it is not usable.
    #[error("could not use the argument: {0}")]
    Invalid(String),
    /// The registry refused the operation (group name, groups per connection), or could not
    /// reach another node with it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A cluster-wide question could not be answered (bus down, a node did not answer).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The call could not be done; the text is the whole answer (RoadRunner's own words where
    /// it has them, e.g. `no such plugin: http`).
    #[error("{0}")]
    Failed(String),
}

/// Everything a method may use; one per RPC listener, shared by its connections.
#[derive(Debug, Clone)]
pub struct Context {
    /// Live connections and groups.
    pub registry: Registry,
    /// The workers, once started: the RPC listener binds first, so that workers find its real
    /// address in `RR_RPC`.
    pub pool: Arc<OnceLock<Pool>>,
    /// Where calls are counted.
    pub metrics: Metrics,
    /// Re-reads the servers' TLS certificates: `resetter.Reset` reloads them with the workers.
    pub tls: crate::TlsReloader,
}

impl Context {
    /// The pool, or the error a call gets while it is still starting.
    pub fn pool(&self) -> Result<&Pool, MethodError> {
        self.pool
            .get()
            .ok_or_else(|| MethodError::Failed("the worker pool is still starting".into()))
    }
}

/// A handler's future: the encoded result, or an error for the client.
type Answer = Pin<Box<dyn Future<Output = Result<Vec<u8>, MethodError>> + Send>>;
/// A registered method: argument bytes in, encoded result out.
type Handler = Box<dyn Fn(Arc<Context>, Codec, Bytes) -> Answer + Send + Sync>;

/// The method table.
pub struct Methods {
    /// `Service.Method` → handler.
    table: HashMap<&'static str, Handler>,
}

impl std::fmt::Debug for Methods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.table.keys().collect();
        names.sort_unstable();
        f.debug_struct("Methods").field("names", &names).finish()
    }
}

impl Methods {
    /// An empty table.
    pub fn new() -> Methods {
        Methods {
            table: HashMap::new(),
        }
    }

    /// Every method Pier serves: RoadRunner's `tcp.Close` and `rpc.Version`, and `pier.*`.
    pub fn standard() -> Methods {
        let mut m = Methods::new();
        super::ops::register(&mut m);
        m.register("tcp.Close", |ctx, arg: UuidArg| async move {
            // RoadRunner: always true, an unknown uuid is not an error. In a cluster, a bus that
            // cannot take the close of another node's connection is one.
            ctx.registry.close(arg.uuid())?;
            Ok(true)
        });
        m.register("rpc.Version", |_, _: IgnoredAny| async { Ok(VERSION) });
        m.register("pier.Send", |ctx, arg: SendArgs| async move {
            let data = arg.data.bytes()?;
            Ok(ctx.registry.send(&arg.uuid, data)?)
        });
        m.register("pier.Broadcast", |ctx, arg: BroadcastArgs| async move {
            let data = arg.data.bytes()?;
            let filter = Filter {
                server: arg.server.as_deref(),
                group: arg.group.as_deref(),
            };
            Ok(ctx.registry.broadcast(&data, filter, &arg.except)?)
        });
        m.register("pier.Join", |ctx, arg: GroupArgs| async move {
            Ok(ctx.registry.join(&arg.uuid, &arg.group)?)
        });
        m.register("pier.Leave", |ctx, arg: GroupArgs| async move {
            Ok(ctx.registry.leave(&arg.uuid, &arg.group)?)
        });
        m.register("pier.Close", |ctx, arg: UuidObject| async move {
            Ok(ctx.registry.close(&arg.uuid)?)
        });
        m.register("pier.List", |ctx, arg: ListArgs| async move {
            let limit = arg.limit.unwrap_or(DEFAULT_LIST_LIMIT);
            if limit > MAX_LIST_LIMIT {
                return Err(MethodError::Invalid(format!(
                    "limit {limit} is over {MAX_LIST_LIMIT}"
                )));
            }
            let filter = Filter {
                server: arg.server.as_deref(),
                group: arg.group.as_deref(),
            };
            let offset = arg.offset.unwrap_or(0);
            let registry = &ctx.registry;
            Ok(match registry.cluster() {
                Some(cluster) => {
                    let page = cluster.list(registry, filter, offset, limit).await?;
                    ListResult {
                        total: page.total,
                        connections: page.connections,
                        missing: Some(page.missing),
                    }
                }
                None => {
                    let (total, connections) = registry.list(filter, offset, limit);
                    ListResult {
                        total,
                        connections,
                        missing: None,
                    }
                }
            })
        });
        m.register("pier.Info", |ctx, arg: UuidObject| async move {
            let registry = &ctx.registry;
            Ok(match registry.cluster() {
                Some(cluster) => cluster.info(registry, &arg.uuid).await?,
                None => registry.info(&arg.uuid),
            })
        });
        m.register("pier.Count", |ctx, arg: FilterArgs| async move {
            let filter = Filter {
                server: arg.server.as_deref(),
                group: arg.group.as_deref(),
            };
            let registry = &ctx.registry;
            Ok(match registry.cluster() {
                Some(cluster) => cluster.count(registry, filter).await?,
                None => registry.count(filter),
            })
        });
        m.register("pier.Groups", |ctx, arg: ServerArg| async move {
            let registry = &ctx.registry;
            let server = arg.server.as_deref();
            Ok::<Vec<GroupInfo>, MethodError>(match registry.cluster() {
                Some(cluster) => cluster.groups(registry, server).await?,
                None => registry.groups(server),
            })
        });
        m
    }

    /// Adds (or replaces) method `name`: its argument is decoded as `A` in the request's codec,
    /// its result encoded the same way.
    pub fn register<A, R, F, Fut>(&mut self, name: &'static str, handler: F)
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Arc<Context>, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, MethodError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.table.insert(
            name,
            Box::new(move |ctx, codec, argument| {
                let handler = handler.clone();
                Box::pin(async move {
                    let arg: A = codec.decode(&argument)?;
                    let result = handler(ctx, arg).await?;
                    Ok(codec.encode(&result)?)
                })
            }),
        );
    }

    /// Runs method `name`; `None` when there is no such method.
    pub fn call(
        &self,
        name: &[u8],
        ctx: Arc<Context>,
        codec: Codec,
        argument: Bytes,
    ) -> Option<Answer> {
        let name = std::str::from_utf8(name).ok()?;
        let handler = self.table.get(name)?;
        Some(handler(ctx, codec, argument))
    }
}

impl Default for Methods {
    fn default() -> Self {
        Methods::standard()
    }
}

/// `tcp.Close`'s argument: the uuid, or `{"uuid": …}` (RoadRunner v6 beta).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UuidArg {
    /// As RoadRunner v2024/v2025 and the stock PHP client send it.
    Text(String),
    /// As RoadRunner v6 beta.5 sends it.
    Object(UuidObject),
}

impl UuidArg {
    fn uuid(&self) -> &str {
        match self {
            UuidArg::Text(uuid) => uuid,
            UuidArg::Object(o) => &o.uuid,
        }
    }
}

/// `{"uuid": …}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UuidObject {
    /// The connection.
    uuid: String,
}

/// Bytes to send: `data` (a string, or msgpack binary) or, from JSON clients when the bytes are
/// not UTF-8, `data_b64` (standard base64). Exactly one.
#[derive(Debug, Deserialize)]
struct Data {
    /// The bytes as they are.
    #[serde(default)]
    data: Option<ByteBuf>,
    /// The bytes, base64.
    #[serde(default)]
    data_b64: Option<String>,
}

impl Data {
    fn bytes(self) -> Result<Bytes, MethodError> {
        match (self.data, self.data_b64) {
            (Some(data), None) => Ok(Bytes::from(data.into_vec())),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map(Bytes::from)
                .map_err(|e| MethodError::Invalid(format!("data_b64 is not base64: {e}"))),
            _ => Err(MethodError::Invalid(
                "give exactly one of data and data_b64".into(),
            )),
        }
    }
}

/// `pier.Send`.
#[derive(Debug, Deserialize)]
struct SendArgs {
    /// The connection.
    uuid: String,
    /// The bytes.
    #[serde(flatten)]
    data: Data,
}

/// `pier.Broadcast`.
#[derive(Debug, Deserialize)]
struct BroadcastArgs {
    /// The bytes.
    #[serde(flatten)]
    data: Data,
    /// Only this group's members.
    #[serde(default)]
    group: Option<String>,
    /// Only this server's connections.
    #[serde(default)]
    server: Option<String>,
    /// Left out.
    #[serde(default)]
    except: Vec<String>,
}

/// `pier.Join`, `pier.Leave`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupArgs {
    /// The connection.
    uuid: String,
    /// The group.
    group: String,
}

/// `pier.List`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    /// Only this server's connections.
    #[serde(default)]
    server: Option<String>,
    /// Only this group's members.
    #[serde(default)]
    group: Option<String>,
    /// Skip this many.
    #[serde(default)]
    offset: Option<usize>,
    /// At most this many ([`DEFAULT_LIST_LIMIT`], at most [`MAX_LIST_LIMIT`]).
    #[serde(default)]
    limit: Option<usize>,
}

/// `pier.Count`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterArgs {
    /// Only this server's connections.
    #[serde(default)]
    server: Option<String>,
    /// Only this group's members.
    #[serde(default)]
    group: Option<String>,
}

/// `pier.Groups`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerArg {
    /// Only members of this server.
    #[serde(default)]
    server: Option<String>,
}

/// `pier.List`'s result.
#[derive(Debug, Serialize)]
struct ListResult {
    /// How many connections the filter selects.
    total: usize,
    /// This page of them.
    connections: Vec<ConnInfo>,
    /// In a cluster: the nodes that did not answer in time (their connections are missing from
    /// `total` and the page). Absent on a single instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    missing: Option<Vec<String>>,
}
