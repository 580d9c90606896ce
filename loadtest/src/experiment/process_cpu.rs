//! Where a run's CPU goes: user + system time of every process of the stack under test
//! (gateways, services, card gateway, each store, the generator), read from
//! `/proc/<pid>/stat` before and after the run.
//!
//! A store counts with its descendants (PostgreSQL serves each connection from a forked
//! backend; a process that exited is in its parent's reaped-children time), so each
//! process's figure is its own time plus its reaped children's, summed over its tree. The
//! generator counts alone: its children are the services, listed on their own. Linux only;
//! `/proc` counts in USER_HZ ticks, 100 per second.

use std::{collections::HashMap, path::Path, time::Instant};

use serde::{Deserialize, Serialize};

use crate::mongo_server::MongoServer;

const TICKS_PER_SEC: f64 = 100.0;

/// One process to account for.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    /// Count the process's descendants too (stores); not for the generator.
    pub tree: bool,
}

/// The processes of a run, by name.
#[derive(Debug, Clone, Default)]
pub struct Processes {
    pub list: Vec<Watched>,
}

/// CPU ticks per watched process at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    ticks: Vec<(String, u64)>,
}

/// CPU one process used during a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessCpu {
    pub process: String,
    pub cpu_ms: f64,
}

/// CPU every watched process used during one or more runs, and the operations issued in
/// them (warm-up included: the CPU window covers it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuSpent {
    pub wall_s: f64,
    pub ops: u64,
    pub by_process: Vec<ProcessCpu>,
}

impl Processes {
    pub fn add(&mut self, name: impl Into<String>, pid: u32, tree: bool) {
        self.list.push(Watched {
            name: name.into(),
            pid,
            tree,
        });
    }

    /// This process, as "load generator".
    pub fn with_generator(mut self) -> Self {
        self.add("load generator (loadtest)", std::process::id(), false);
        self
    }

    /// The stores `scripts/stack up` started, from its state file (`pid N name` lines);
    /// `skip` names ones not to list (a store this run replaced with its own).
    pub fn add_stack_state(&mut self, state_file: &Path, skip: &[&str]) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(state_file)?;
        for (name, pid) in stack_state_pids(&text) {
            if !skip.contains(&name.as_str()) {
                self.add(store_label(&name), pid, true);
            }
        }
        Ok(())
    }

    /// Reads every watched process's ticks; a process that is gone is left out. `None`
    /// where `/proc` cannot be read at all.
    pub fn sample(&self) -> Option<Sample> {
        let table = ProcTable::read()?;
        let ticks = self
            .list
            .iter()
            .filter_map(|w| {
                let t = if w.tree {
                    table.tree_ticks(w.pid)
                } else {
                    table.own_ticks(w.pid)
                };
                t.map(|t| (w.name.clone(), t))
            })
            .collect();
        Some(Sample {
            at: Instant::now(),
            ticks,
        })
    }
}

/// Adds the stores of a run whose MongoDB-wire server is `mongo`: from `scripts/stack`'s
/// state file (`SHOP_STACK_STATE`), or else whoever listens on the loopback ports of the
/// stores' `*_URL` variables. Returns a note for each store it cannot account for.
pub fn watch_stores(procs: &mut Processes, mongo: &MongoServer) -> Vec<String> {
    let mut notes = Vec::new();
    match std::env::var("SHOP_STACK_STATE") {
        // The stack's own SecantusDB idles when the run has its own.
        Ok(f) if !f.is_empty() => {
            let skip: &[&str] = if mongo.is_own() { &["secantus"] } else { &[] };
            if let Err(e) = procs.add_stack_state(Path::new(&f), skip) {
                notes.push(format!(
                    "The stores' CPU is not accounted: reading {f}: {e:#}."
                ));
            }
        }
        _ => {
            let mut stores = vec![
                ("PostgreSQL", "USER_DATABASE_URL"),
                ("MariaDB", "PAYMENT_DATABASE_URL"),
                ("Redis", "ITEM_REDIS_URL"),
                ("NATS", "NATS_URL"),
            ];
            if !mongo.is_own() {
                stores.push(("MongoDB server", "ITEM_MONGODB_URL"));
            }
            for (label, var) in stores {
                match store_pid(var) {
                    Some(pid) => procs.add(label, pid, true),
                    None => notes.push(format!(
                        "{label}'s CPU is not accounted: no process of this machine that loadtest can see listens on {var}'s port."
                    )),
                }
            }
        }
    }
    if let Some(pid) = mongo.pid() {
        procs.add("SecantusDB (this run's)", pid, true);
    }
    notes
}

fn store_pid(var: &str) -> Option<u32> {
    let url = reqwest::Url::parse(&std::env::var(var).ok()?).ok()?;
    listener_pid(url.port()?)
}

/// Every process's id and `/proc` directory (None where `/proc` cannot be listed).
fn processes() -> Option<impl Iterator<Item = (u32, std::path::PathBuf)>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(entries.flatten().filter_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        Some((pid, entry.path()))
    }))
}

/// The process listening on TCP `port` (any address), from `/proc/net/tcp{,6}` and every
/// process's open sockets; none where it cannot be seen (another user's process without
/// root, a container).
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|t| listening_inode(&t, port))?;
    let socket = format!("socket:[{inode}]");
    for (pid, dir) in processes()? {
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the listening socket on `port` in a `/proc/net/tcp` table (hex
/// `address:port`, state `0A` = LISTEN, inode in the tenth column).
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        (*f.get(3)? == "0A" && local_port == port)
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// What the stack's state file calls a store, as the report names it.
fn store_label(name: &str) -> String {
    match name {
        "postgres" => "PostgreSQL".into(),
        "mariadb" => "MariaDB".into(),
        "redis" => "Redis".into(),
        "secantus" => "SecantusDB".into(),
        "nats" => "NATS".into(),
        other => other.into(),
    }
}

/// `(name, pid)` of every `pid N name` line of a `scripts/stack` state file.
pub fn stack_state_pids(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            if f.next()? != "pid" {
                return None;
            }
            let pid = f.next()?.parse().ok()?;
            Some((f.next()?.to_owned(), pid))
        })
        .collect()
}

/// CPU per process between two samples of the same [`Processes`], plus the operations.
pub fn spent(before: &Sample, after: &Sample, ops: u64) -> CpuSpent {
    let was: HashMap<&str, u64> = before.ticks.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    CpuSpent {
        wall_s: after.at.duration_since(before.at).as_secs_f64(),
        ops,
        by_process: after
            .ticks
            .iter()
            .filter_map(|(n, t)| {
                let b = was.get(n.as_str())?;
                Some(ProcessCpu {
                    process: n.clone(),
                    cpu_ms: t.saturating_sub(*b) as f64 * 1000.0 / TICKS_PER_SEC,
                })
            })
            .collect(),
    }
}

impl CpuSpent {
    /// Adds another run's figures (same processes, by name).
    pub fn add(&mut self, other: &CpuSpent) {
        self.wall_s += other.wall_s;
        self.ops += other.ops;
        for p in &other.by_process {
            match self.by_process.iter_mut().find(|x| x.process == p.process) {
                Some(x) => x.cpu_ms += p.cpu_ms,
                None => self.by_process.push(p.clone()),
            }
        }
    }

    /// CPU milliseconds per operation of one process (0 when it is not listed).
    pub fn per_op_ms(&self, process: &str) -> f64 {
        self.by_process
            .iter()
            .find(|p| p.process == process)
            .map_or(0.0, |p| p.cpu_ms / self.ops.max(1) as f64)
    }

    pub fn total_ms(&self) -> f64 {
        self.by_process.iter().map(|p| p.cpu_ms).sum()
    }

    /// The process that used the most CPU: its name, the cores it kept busy and its share
    /// of all the watched processes' CPU.
    pub fn busiest(&self) -> Option<(&str, f64, f64)> {
        let top = self
            .by_process
            .iter()
            .max_by(|a, b| a.cpu_ms.total_cmp(&b.cpu_ms))?;
        let total = self.total_ms();
        (total > 0.0).then(|| {
            (
                top.process.as_str(),
                top.cpu_ms / 1000.0 / self.wall_s.max(1e-9),
                top.cpu_ms / total,
            )
        })
    }
}

/// Every process's parent and ticks at one moment.
struct ProcTable {
    /// pid -> (ppid, utime + stime, cutime + cstime)
    procs: HashMap<u32, (u32, u64, u64)>,
}

impl ProcTable {
    fn read() -> Option<Self> {
        let mut procs = HashMap::new();
        for (pid, dir) in processes()? {
            // A process may exit between the listing and the read: skip it.
            if let Some(v) = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
            {
                procs.insert(pid, v);
            }
        }
        (!procs.is_empty()).then_some(Self { procs })
    }

    fn own_ticks(&self, pid: u32) -> Option<u64> {
        self.procs.get(&pid).map(|(_, own, _)| *own)
    }

    /// The process's and its live descendants' own and reaped children's ticks.
    fn tree_ticks(&self, root: u32) -> Option<u64> {
        self.procs.get(&root)?;
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (pid, (ppid, _, _)) in &self.procs {
            children.entry(*ppid).or_default().push(*pid);
        }
        let (mut sum, mut stack) = (0, vec![root]);
        while let Some(p) = stack.pop() {
            if let Some((_, own, reaped)) = self.procs.get(&p) {
                sum += own + reaped;
            }
            stack.extend(children.get(&p).into_iter().flatten().copied());
        }
        Some(sum)
    }
}

/// (ppid, utime + stime, cutime + cstime) from `/proc/<pid>/stat`; fields are counted
/// after the last ')' (the command name may hold spaces and parentheses).
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    let ppid = u32::try_from(num(4)?).ok()?;
    Some((ppid, num(14)? + num(15)?, num(16)? + num(17)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stack_state_file() {
        let text = "data /tmp/shop-stack.x\npid 41 postgres\npid 42 mariadb\nbogus\npid x redis\npid 44 nats\n";
        assert_eq!(
            stack_state_pids(text),
            [
                ("postgres".to_owned(), 41),
                ("mariadb".to_owned(), 42),
                ("nats".to_owned(), 44)
            ]
        );
    }

    #[test]
    fn finds_the_listening_socket_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(listening_inode(table, 8080), Some(4242));
        assert_eq!(listening_inode(table, 8081), None);
    }

    #[test]
    fn the_owner_of_a_listening_port_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        drop(l);
        assert_eq!(listener_pid(port), None, "nobody listens once it is closed");
    }

    #[test]
    fn parses_parent_and_ticks_past_a_command_name_with_spaces() {
        let stat = "4242 (load (test) x) S 17 2 3 4 5 6 7 8 9 10 150 50 30 20 20 0 1 0";
        assert_eq!(parse_stat(stat), Some((17, 200, 50)));
    }

    #[test]
    fn adds_runs_and_names_the_busiest_process() {
        let run = |a: f64, b: f64| CpuSpent {
            wall_s: 1.0,
            ops: 10,
            by_process: vec![
                ProcessCpu {
                    process: "gateway".into(),
                    cpu_ms: a,
                },
                ProcessCpu {
                    process: "SecantusDB".into(),
                    cpu_ms: b,
                },
            ],
        };
        let mut all = run(100.0, 300.0);
        all.add(&run(100.0, 500.0));
        assert_eq!(all.ops, 20);
        assert_eq!(all.per_op_ms("gateway"), 10.0);
        assert_eq!(all.per_op_ms("SecantusDB"), 40.0);
        assert_eq!(all.per_op_ms("absent"), 0.0);
        let (name, cores, share) = all.busiest().expect("busiest");
        assert_eq!(name, "SecantusDB");
        assert!((cores - 0.4).abs() < 1e-9 && (share - 0.8).abs() < 1e-9);
    }

    /// A child that burns CPU shows up in its parent's tree, and not in the parent's own
    /// time: what the stores' figures (tree) and the generator's (own) rely on.
    #[test]
    fn a_busy_child_counts_in_its_parents_tree() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 100000000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh");
        let me = std::process::id();
        let mut procs = Processes::default();
        procs.add("tree", me, true);
        procs.add("own", me, false);
        procs.add("child", child.id(), false);
        let a = procs
            .sample()
            .expect("/proc readable (Linux): the accounting must measure here");
        // Until /proc has charged the child some CPU (however busy the machine is).
        let started = Instant::now();
        let b = loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let b = procs.sample().expect("second sample");
            let s = spent(&a, &b, 1);
            if s.per_op_ms("child") >= 50.0 || started.elapsed().as_secs() >= 30 {
                break b;
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let s = spent(&a, &b, 1);
        let child_ms = s.per_op_ms("child");
        assert!(child_ms >= 50.0, "the child was charged no CPU: {s:?}");
        assert!(
            s.per_op_ms("tree") >= child_ms,
            "the parent's tree misses its child's CPU: {s:?}"
        );
        assert!(
            s.per_op_ms("own") < child_ms,
            "the parent's own time includes its child's: {s:?}"
        );
    }
}
