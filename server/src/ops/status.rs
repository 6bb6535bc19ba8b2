//! RoadRunner's status checks for the `tcp` plugin: `/health?plugin=tcp`, `/ready?plugin=tcp`.
//!
//! As RoadRunner's plugins decide them: healthy while at least one worker is alive; ready while
//! at least one worker is idle. Pier adds "or the pool can take events": workers are alive and no
//! event is waiting for one yet, so a pool whose every worker is busy with short events does not
//! flap out of a load balancer; it turns unready once events queue up or no worker is alive.

use super::metrics::PoolSnapshot;

/// The one plugin Pier has.
pub const PLUGIN: &str = "tcp";

/// Which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `/health`: alive.
    Health,
    /// `/ready`: can take an event now.
    Ready,
}

/// Whether the pool passes `check`.
pub fn passes(check: Check, pool: &PoolSnapshot) -> bool {
    match check {
        Check::Health => pool.workers > 0,
        Check::Ready => pool.idle > 0 || (pool.workers > 0 && pool.waiting == 0),
    }
}

/// The status code and body for a query string (`plugin=tcp&plugin=…`; none = every plugin):
/// 200 when every named plugin passes, `unavailable` when one fails, 404 for a plugin Pier does
/// not have. The body has one `plugin: <name>, status: <code>` line per plugin, as RoadRunner's.
pub fn answer(check: Check, query: &str, pool: &PoolSnapshot, unavailable: u16) -> (u16, String) {
    let mut plugins: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "plugin")
        .flat_map(|(_, v)| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if plugins.is_empty() {
        plugins.push(PLUGIN.to_owned());
    }
    let mut code = 200;
    let mut body = String::new();
    for plugin in plugins {
        let this = if plugin != PLUGIN {
            404
        } else if passes(check, pool) {
            200
        } else {
            unavailable
        };
        if this == 404 {
            body.push_str(&format!("plugin: {}, not found\n", printable(&plugin)));
        } else {
            body.push_str(&format!("plugin: {plugin}, status: {this}\n"));
        }
        // A missing plugin outranks an unavailable one: the probe itself is wrong.
        if this == 404 || code == 200 {
            code = this;
        }
    }
    (code, body)
}

/// A client-supplied name, bounded and without control characters, for the body.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(workers: usize, idle: usize, waiting: usize) -> PoolSnapshot {
        PoolSnapshot {
            workers,
            busy: workers - idle,
            idle,
            waiting,
        }
    }

    #[test]
    fn health_needs_a_live_worker_ready_needs_room() {
        let cases = [
            // (workers, idle, waiting) → (health, ready)
            ((2, 2, 0), (true, true)),
            ((2, 0, 0), (true, true)),
            ((2, 0, 3), (true, false)),
            ((2, 1, 3), (true, true)),
            ((0, 0, 0), (false, false)),
            ((0, 0, 4), (false, false)),
        ];
        for ((w, i, q), (h, r)) in cases {
            let p = pool(w, i, q);
            assert_eq!(passes(Check::Health, &p), h, "{p:?}");
            assert_eq!(passes(Check::Ready, &p), r, "{p:?}");
        }
    }

    #[test]
    fn codes_and_bodies() {
        let up = pool(1, 1, 0);
        let down = pool(0, 0, 0);
        assert_eq!(
            answer(Check::Ready, "plugin=tcp", &up, 503),
            (200, "plugin: tcp, status: 200\n".into())
        );
        assert_eq!(
            answer(Check::Ready, "", &down, 503),
            (503, "plugin: tcp, status: 503\n".into())
        );
        assert_eq!(
            answer(Check::Health, "plugin=tcp", &down, 500).0,
            500,
            "unavailable_status_code honoured"
        );
        assert_eq!(
            answer(Check::Health, "plugin=http&plugin=tcp", &up, 503),
            (
                404,
                "plugin: http, not found\nplugin: tcp, status: 200\n".into()
            )
        );
        assert_eq!(answer(Check::Health, "plugin=tcp,http", &down, 503).0, 404);
    }
}
