//! Parsed `INFO commandstats`.

use std::collections::BTreeMap;

/// Commands the function library (`lua/sessions.lua`) runs inside an
/// `FCALL`; `INFO commandstats` counts them too. Anything else in a delta is
/// a command a client sent.
pub const LIBRARY_INTERNAL: &[&str] = &[
    "hmget",
    "hget",
    "exists",
    "zscore",
    "zcount",
    "hset",
    "del",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "pexpireat",
    "persist",
];

/// Number of calls per command, as reported by `INFO commandstats`.
///
/// Keys are the names after `cmdstat_`, lowercase, with Redis 7 subcommands
/// written as `container|sub` (e.g. `"fcall"`, `"client|setinfo"`,
/// `"function|load"`, `"ping"`).
///
/// # The harness's own `INFO` calls are already excluded
///
/// Every snapshot is taken with exactly one `INFO commandstats` command over
/// the harness's raw connection, which sends nothing else. Redis updates a
/// command's counter only after the command ran, so a snapshot never counts
/// itself, but it does count every earlier snapshot of the same server process.
/// The harness counts the snapshots it took of each server process (resetting
/// on restart) and subtracts that number from `info` in every snapshot it
/// returns. So the `info` entry of a snapshot is the number of `INFO` calls
/// made by anyone else (tests, the crate under test, `RedisServer::cmd(&["INFO"])`),
/// and [`CommandStats::delta_since`] is a plain per-command subtraction.
/// For a cluster, snapshots are per node and summed.
///
/// Caveat: `CONFIG RESETSTAT` resets Redis' counters but not the harness's
/// snapshot counter; the `info` entry then saturates at zero.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandStats(pub BTreeMap<String, u64>);

impl CommandStats {
    /// The commands of this delta a client sent besides `FCALL`: those that
    /// are neither `fcall` nor run inside the function library.
    pub fn client_commands_besides_fcall(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .filter(|name| *name != "fcall" && !LIBRARY_INTERNAL.contains(name))
            .collect()
    }

    /// Parses the text of an `INFO commandstats` reply.
    pub fn parse(info: &str) -> CommandStats {
        let mut map = BTreeMap::new();
        for line in info.lines() {
            let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("cannot parse commandstats line {line:?}"));
            map.insert(name.to_ascii_lowercase(), calls);
        }
        CommandStats(map)
    }

    /// `after.delta_since(&before)`: how many more times each command was
    /// called in `after` than in `before`. Entries that did not increase are
    /// dropped, so an idle interval yields an empty (== default) value.
    /// The harness's snapshot `INFO` calls never appear (see the type docs).
    pub fn delta_since(&self, before: &CommandStats) -> CommandStats {
        CommandStats(
            self.0
                .iter()
                .filter_map(|(name, &after)| {
                    let delta = after.saturating_sub(before.get(name));
                    (delta > 0).then(|| (name.clone(), delta))
                })
                .collect(),
        )
    }

    /// Sum of calls over all commands.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Calls of one command (0 if absent). Case-insensitive; subcommands are
    /// written `container|sub`, e.g. `get("function|load")`.
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(&name.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// Adds `other`'s counts into `self` (used to sum over cluster nodes).
    pub fn add(&mut self, other: &CommandStats) {
        for (name, calls) in &other.0 {
            *self.0.entry(name.clone()).or_insert(0) += calls;
        }
    }

    /// Builds a value from `(name, calls)` pairs, handy for assertions:
    /// `assert_eq!(delta, CommandStats::from_pairs(&[("fcall", 1)]))`.
    pub fn from_pairs(pairs: &[(&str, u64)]) -> CommandStats {
        CommandStats(
            pairs
                .iter()
                .filter(|(_, calls)| *calls > 0)
                .map(|(name, calls)| (name.to_ascii_lowercase(), *calls))
                .collect(),
        )
    }
}
