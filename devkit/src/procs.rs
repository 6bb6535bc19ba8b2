//! The processes of this machine, from `/proc`: who is whose child, and who is a zombie (the
//! bench sums a server's process tree; the e2e suite finds a pier's workers).

use std::fs;
use std::io;

/// One process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its state letter (`R`, `S`, `Z` for a zombie, …).
    pub state: char,
}

/// Every process now. One that exits while it is read is left out. An error only when `/proc`
/// itself cannot be listed (not Linux, or no procfs mounted).
pub fn processes() -> io::Result<Vec<Process>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, ppid)) = parse_stat(&stat) {
            out.push(Process { pid, ppid, state });
        }
    }
    Ok(out)
}

/// The state and parent pid in a `/proc/<pid>/stat` line: "pid (comm) state ppid …", where comm
/// may hold spaces and parentheses, so the fields are read after the last ')'.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names() {
        assert_eq!(parse_stat("42 (php) S 7 42 42 0"), Some(('S', 7)));
        assert_eq!(parse_stat("43 (a) b (c)) Z 1 0"), Some(('Z', 1)));
        assert_eq!(parse_stat("44 (x"), None);
    }

    #[test]
    fn this_process_is_listed_with_its_parent() {
        let me = std::process::id();
        let all = processes().unwrap();
        let mine = all.iter().find(|p| p.pid == me).expect("this process");
        assert_eq!(mine.ppid, std::os::unix::process::parent_id());
        assert_ne!(mine.state, 'Z');
    }
}
