//! Local-first sync through a real `nats-server` (2.9): nodes write offline, then sync,
//! with conflicts on shared streams, the server killed and restarted, and syncs cut off
//! mid-way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use varvedb::{ReplicatedEvent, Stream};
use varvedb_nats::{
    ConflictOutcome, EventStatus, LocalExecuteError, Resolution, SyncConfig, SyncError, SyncNode, SyncReport,
};

#[path = "support/nats.rs"]
mod nats;

#[path = "support/accounts.rs"]
mod accounts;
use accounts::{Account, Deposit, DepositTwice, Deposited, Overdrawn, Withdraw, Withdrawn};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn open(dir: &std::path::Path) -> SyncNode {
    accounts::open_node(dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Syncs `node` until it has nothing pending, reconnecting after every failure; with
/// `cut`, some attempts are dropped mid-way (the client with them) after a random time.
async fn sync_until_done(node: &SyncNode, url: &str, mut cut: Option<fastrand::Rng>) -> Vec<SyncReport> {
    let mut reports = Vec::new();
    for _ in 0..400 {
        let Ok(client) = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_millis(500))
            .connect(url)
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let limit = cut.as_mut().and_then(|rng| rng.bool().then(|| Duration::from_millis(rng.u64(1..60))));
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, node.sync(&client)).await {
                Ok(r) => r,
                Err(_) => continue, // dropped mid-way, and the client with it
            },
            None => node.sync(&client).await,
        };
        match result {
            Ok(report) => {
                let done = report.pending == 0;
                reports.push(report);
                if done {
                    return reports;
                }
            }
            Err(SyncError::Nats(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("sync failed: {e}"),
        }
    }
    panic!("a node did not finish syncing in 400 attempts");
}

/// Every accepted record of `node`, as stored.
fn accepted_log(node: &SyncNode) -> Vec<ReplicatedEvent> {
    node.accepted().export_replicated(0, usize::MAX).unwrap()
}

/// The nonces of the commands a conflict dropped.
fn dropped_nonces(outcome: &ConflictOutcome) -> Vec<u64> {
    outcome
        .dropped
        .iter()
        .map(|(id, _)| nonce_of(outcome.conflict.pending.iter().find(|p| p.event_id == *id).unwrap()))
        .collect()
}

const SHARED: [u128; 3] = [1, 2, 3];

/// Node `n`'s own account.
fn own(n: usize) -> u128 {
    100 + n as u128
}

fn accounts() -> impl Iterator<Item = u128> {
    SHARED.into_iter().chain((0..3).map(own))
}

/// What the random run did, for the checks.
struct Run {
    seed: u64,
    /// Nonces of the commands that decided an event.
    decided: HashSet<u64>,
    next_nonce: u64,
    reports: Vec<SyncReport>,
    kills: u32,
}

/// Offline: each node writes `ops` commands to shared accounts and its own.
fn offline(run: &mut Run, rng: &mut fastrand::Rng, nodes: &[SyncNode], ops: u64) {
    let seed = run.seed;
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..ops {
            let id = if rng.bool() { SHARED[rng.usize(..SHARED.len())] } else { own(n) };
            let account = node.stream::<Account>(id);
            run.next_nonce += 1;
            let (nonce, cents) = (run.next_nonce, rng.u64(1..200));
            let executed = if rng.u8(..100) < 50 {
                account.execute(&Deposit { cents, nonce })
            } else {
                account.execute(&Withdraw { cents, nonce })
            };
            match executed {
                Ok(e) => {
                    assert!(e.event_id.is_some());
                    run.decided.insert(nonce);
                }
                Err(LocalExecuteError::Rejected(Overdrawn)) => {}
                Err(e) => panic!("seed {seed}: execute failed: {e}"),
            }
            let loaded = account.load().unwrap();
            assert!(loaded.state().balance >= 0, "seed {seed}: a local balance went negative");
        }
        // What the node wrote is visible, and marked pending.
        let pending: usize = SHARED
            .iter()
            .chain([&own(n)])
            .map(|id| {
                let history = node.stream::<Account>(*id).history().unwrap();
                history.iter().filter(|e| e.status == EventStatus::Pending).count()
            })
            .sum();
        assert_eq!(pending, node.pending_count());
    }
}

/// Online: in a random order, some nodes at once, while the server may be killed and
/// restarted and syncs may be cut off.
fn online(
    run: &mut Run,
    rng: &mut fastrand::Rng,
    rt: &tokio::runtime::Runtime,
    nodes: &[SyncNode],
    server: &Arc<Mutex<nats::NatsServer>>,
) {
    let url = server.lock().unwrap().url();
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    rng.shuffle(&mut order);
    let together = rng.bool();
    let kill = rng.bool().then(|| (rng.u64(0..40), rng.u64(0..300)));
    run.kills += u32::from(kill.is_some());
    let cuts: Vec<fastrand::Rng> = order.iter().map(|_| fastrand::Rng::with_seed(rng.u64(..))).collect();
    let reports = rt.block_on(async {
        let chaos = {
            let server = Arc::clone(server);
            async move {
                if let Some((after, down)) = kill {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    let s = Arc::clone(&server);
                    tokio::task::spawn_blocking(move || s.lock().unwrap().kill()).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(down)).await;
                    tokio::task::spawn_blocking(move || server.lock().unwrap().restart()).await.unwrap();
                }
            }
        };
        let syncs = async {
            let mut all = Vec::new();
            if together {
                let runs =
                    order.iter().zip(cuts).map(|(n, cut)| sync_until_done(&nodes[*n], &url, Some(cut)));
                for r in futures_util::future::join_all(runs).await {
                    all.extend(r);
                }
            } else {
                for (n, cut) in order.iter().zip(cuts) {
                    all.extend(sync_until_done(&nodes[*n], &url, Some(cut)).await);
                }
            }
            all
        };
        tokio::join!(chaos, syncs).1
    });
    run.reports.extend(reports);
}

/// The same accepted log, byte for byte, on every node, and it is the hub's.
fn check_one_log(run: &Run, rt: &tokio::runtime::Runtime, nodes: &[SyncNode], url: &str) {
    let seed = run.seed;
    let logs: Vec<Vec<ReplicatedEvent>> = nodes.iter().map(accepted_log).collect();
    for (n, log) in logs.iter().enumerate().skip(1) {
        assert_eq!(log.len(), logs[0].len(), "seed {seed}: node {n} has another number of accepted events");
        for (a, b) in log.iter().zip(&logs[0]) {
            assert!(a == b, "seed {seed}: node {n} differs at seq {}", a.seq());
        }
    }
    let hub_end = rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("VARVE_SYNC").await.unwrap();
        stream.info().await.unwrap().state.last_sequence
    });
    assert_eq!(logs[0].len() as u64, hub_end, "seed {seed}: the accepted log is not the hub's");
    for node in nodes {
        node.accepted().begin_read().unwrap().check_integrity().unwrap();
        assert_eq!(node.pending_count(), 0, "seed {seed}: events left pending");
    }
}

/// No command lost or accepted twice: each one that decided an event is accepted once or
/// was dropped, and reported, after a conflict. Returns (accepted, dropped, conflicts).
fn check_every_command(run: &Run, nodes: &[SyncNode]) -> (usize, usize, usize) {
    let node = &nodes[0];
    let seed = run.seed;
    let view = node.accepted().begin_read().unwrap();
    let mut accepted: HashMap<u64, u64> = HashMap::new();
    for id in accounts() {
        for event in Stream::<Account>::read(&node.accepted().stream::<Account>(id), &view, 1).unwrap() {
            let event = event.unwrap();
            let nonce = match (event.get::<Deposited>().unwrap(), event.get::<Withdrawn>().unwrap()) {
                (Some(d), _) => d.nonce.to_native(),
                (_, Some(w)) => w.nonce.to_native(),
                _ => panic!("an unknown event"),
            };
            let seq = event.recorded().seq();
            assert!(accepted.insert(nonce, seq).is_none(), "seed {seed}: command {nonce} accepted twice");
        }
    }
    assert_eq!(
        accepted.len() as u64,
        view.last_seq().unwrap(),
        "seed {seed}: accepted events outside the accounts"
    );
    let outcomes: Vec<&ConflictOutcome> = run.reports.iter().flat_map(|r| &r.conflicts).collect();
    let mut dropped = HashSet::new();
    for outcome in &outcomes {
        assert_eq!(outcome.resolution, Resolution::Rerun);
        for n in dropped_nonces(outcome) {
            assert!(dropped.insert(n), "seed {seed}: command {n} dropped twice");
            assert!(!accepted.contains_key(&n), "seed {seed}: command {n} dropped and accepted");
        }
    }
    for n in &run.decided {
        assert!(
            accepted.contains_key(n) || dropped.contains(n),
            "seed {seed}: command {n} was neither accepted nor reported dropped"
        );
    }
    assert_eq!(accepted.len() + dropped.len(), run.decided.len(), "seed {seed}: events from nowhere");
    let on_record: HashSet<u64> =
        nodes.iter().flat_map(|n| n.dropped_commands().unwrap()).map(|d| nonce_of(&d.command)).collect();
    assert_eq!(
        on_record, dropped,
        "seed {seed}: the nodes' records of dropped commands differ from the reports"
    );
    assert!(!outcomes.is_empty(), "seed {seed}: no conflict was exercised");
    (accepted.len(), dropped.len(), outcomes.len())
}

#[test]
fn three_nodes_converge_on_one_accepted_log() {
    let seed = env("VARVEDB_SYNC_SEED", fastrand::u64(..));
    let rounds = env("VARVEDB_SYNC_ROUNDS", 8);
    let ops = env("VARVEDB_SYNC_OPS", 40);
    // Shown when the test fails.
    println!("seed {seed} (VARVEDB_SYNC_SEED={seed}), {rounds} rounds of {ops} commands per node");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = Arc::new(Mutex::new(nats::NatsServer::start()));
    let url = server.lock().unwrap().url();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<SyncNode> = dirs.iter().map(|d| open(d.path())).collect();
    let rt = runtime();
    let mut run = Run { seed, decided: HashSet::new(), next_nonce: 0, reports: Vec::new(), kills: 0 };
    for _ in 0..rounds {
        offline(&mut run, &mut rng, &nodes, ops);
        online(&mut run, &mut rng, &rt, &nodes, &server);
    }
    // Online for good: a pass that pushes what is left, and one that imports it everywhere.
    rt.block_on(async {
        for _ in 0..2 {
            for node in &nodes {
                run.reports.extend(sync_until_done(node, &url, None).await);
            }
        }
    });

    check_one_log(&run, &rt, &nodes, &url);
    let (accepted, dropped, conflicts) = check_every_command(&run, &nodes);
    // The domain invariant holds on every node's accepted log and local view.
    for node in &nodes {
        for id in accounts() {
            let state = node.accepted().stream::<Account>(id).load().unwrap().into_state();
            assert!(state.lowest >= 0, "seed {seed}: account {id} went negative");
            assert_eq!(node.stream::<Account>(id).load().unwrap().state().balance, state.balance);
        }
    }
    let refused: u64 = run.reports.iter().map(|r| r.refused).sum();
    let duplicates: u64 = run.reports.iter().map(|r| r.duplicates).sum();
    println!(
        "{} commands decided, {accepted} accepted, {dropped} dropped after {conflicts} conflicts; \
         {refused} pushes refused, {duplicates} duplicates; {} server kills",
        run.decided.len(),
        run.kills
    );
}

/// One sync over a fresh connection, which must succeed.
fn sync_once(rt: &tokio::runtime::Runtime, node: &SyncNode, url: &str) -> Result<SyncReport, SyncError> {
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        node.sync(&client).await
    })
}

/// Two nodes that share account 1 with 100 on it, both synced.
fn two_nodes(rt: &tokio::runtime::Runtime, url: &str) -> (SyncNode, SyncNode, [tempfile::TempDir; 2]) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b) = (open(dirs[0].path()), open(dirs[1].path()));
    a.stream::<Account>(1u128).execute(&Deposit { cents: 100, nonce: 1 }).unwrap();
    sync_once(rt, &a, url).unwrap();
    sync_once(rt, &b, url).unwrap();
    assert_eq!(b.stream::<Account>(1u128).load().unwrap().state().balance, 100);
    (a, b, dirs)
}

#[test]
fn the_loser_of_a_conflict_reruns_its_commands_and_reports_what_the_new_state_rejects() {
    let server = nats::NatsServer::start();
    let rt = runtime();
    let (a, b, _dirs) = two_nodes(&rt, &server.url());
    // Offline, both withdraw: each alone is covered, both together are not.
    a.stream::<Account>(1u128).execute(&Withdraw { cents: 80, nonce: 2 }).unwrap();
    a.stream::<Account>(1u128).execute(&Deposit { cents: 5, nonce: 3 }).unwrap();
    b.stream::<Account>(1u128).execute(&Withdraw { cents: 50, nonce: 4 }).unwrap();
    let local = a.stream::<Account>(1u128).load().unwrap();
    assert_eq!(
        (local.state().balance, local.accepted_version(), local.pending(), local.version()),
        (25, 1, 2, 3)
    );
    let history = a.stream::<Account>(1u128).history().unwrap();
    let status: Vec<EventStatus> = history.iter().map(|e| e.status).collect();
    assert_eq!(status, [EventStatus::Accepted { seq: 1 }, EventStatus::Pending, EventStatus::Pending]);

    let won = sync_once(&rt, &b, &server.url()).unwrap();
    assert_eq!((won.pushed, won.conflicts.len()), (1, 0));
    let lost = sync_once(&rt, &a, &server.url()).unwrap();
    assert_eq!(lost.conflicts.len(), 1);
    let outcome = &lost.conflicts[0];
    assert_eq!(outcome.conflict.base_version, 1);
    assert_eq!(outcome.conflict.remote.len(), 1, "the remote event is b's withdrawal");
    assert_eq!(&*outcome.conflict.remote[0].type_tag, "Withdrawn");
    assert_eq!(outcome.conflict.pending.len(), 2);
    assert_eq!((outcome.resolution, outcome.kept, outcome.dropped.len()), (Resolution::Rerun, 1, 1));
    assert!(outcome.dropped[0].1.contains("does not cover"), "{}", outcome.dropped[0].1);
    assert_eq!(lost.pending, 0);
    sync_once(&rt, &b, &server.url()).unwrap();
    for node in [&a, &b] {
        let loaded = node.stream::<Account>(1u128).load().unwrap();
        assert_eq!((loaded.state().balance, loaded.version(), loaded.pending()), (55, 3, 0));
    }
    assert_eq!(accepted_log(&a), accepted_log(&b));
}

#[test]
fn a_conflict_callback_can_discard_the_pending_commands() {
    let server = nats::NatsServer::start();
    let rt = runtime();
    let (a, b, _dirs) = two_nodes(&rt, &server.url());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    a.on_conflict(move |conflict| {
        let deposits: Vec<u64> =
            conflict.pending.iter().filter_map(|p| p.decode::<Deposit>().unwrap()).map(|d| d.cents).collect();
        record.lock().unwrap().extend(deposits);
        Resolution::Discard
    });
    a.stream::<Account>(1u128).execute(&Deposit { cents: 7, nonce: 2 }).unwrap();
    b.stream::<Account>(1u128).execute(&Deposit { cents: 9, nonce: 3 }).unwrap();
    sync_once(&rt, &b, &server.url()).unwrap();
    let report = sync_once(&rt, &a, &server.url()).unwrap();
    assert_eq!(*seen.lock().unwrap(), [7]);
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!((report.conflicts[0].resolution, report.conflicts[0].kept), (Resolution::Discard, 0));
    assert_eq!((report.pushed, report.pending), (0, 0));
    assert_eq!(a.stream::<Account>(1u128).load().unwrap().state().balance, 109);
}

#[test]
fn pending_commands_survive_a_restart_and_a_rerun_needs_their_type_registered() {
    let server = nats::NatsServer::start();
    let rt = runtime();
    let (a, b, dirs) = two_nodes(&rt, &server.url());
    a.stream::<Account>(1u128).execute(&Withdraw { cents: 30, nonce: 2 }).unwrap();
    a.stream::<Account>(2u128).execute(&Deposit { cents: 3, nonce: 3 }).unwrap();
    b.stream::<Account>(1u128).execute(&Deposit { cents: 1, nonce: 4 }).unwrap();
    sync_once(&rt, &b, &server.url()).unwrap();
    drop(a);

    // Reopened without its command types: the pending events are still there, and the
    // conflict on account 1 cannot be resolved.
    let a = SyncNode::open(dirs[0].path(), SyncConfig::default()).unwrap();
    assert_eq!(a.pending_count(), 2);
    assert_eq!(a.stream::<Account>(2u128).load().unwrap().state().balance, 3);
    match sync_once(&rt, &a, &server.url()) {
        Err(SyncError::UnknownCommand { kind, command, version: 1 }) => {
            assert_eq!((kind.as_str(), command.as_str()), ("Account", "Withdraw"));
        }
        other => panic!("expected UnknownCommand, got {other:?}"),
    }
    assert_eq!(a.pending_count(), 2);
    drop(a);

    let a = open(dirs[0].path());
    let report = sync_once(&rt, &a, &server.url()).unwrap();
    assert_eq!((report.conflicts.len(), report.pending), (1, 0));
    drop(a);
    let a = open(dirs[0].path());
    assert_eq!(a.pending_count(), 0, "accepted events are not pending after a restart");
    sync_once(&rt, &b, &server.url()).unwrap();
    assert_eq!(accepted_log(&a), accepted_log(&b));
    assert_eq!(a.stream::<Account>(1u128).load().unwrap().state().balance, 71);
}

#[test]
fn a_command_deciding_several_events_or_on_the_journal_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    match node.stream::<Account>(1u128).execute(&DepositTwice { cents: 1 }) {
        Err(LocalExecuteError::TooManyEvents { count: 2 }) => {}
        other => panic!("expected TooManyEvents, got {other:?}"),
    }
    let journal = u128::from_be_bytes(*b"varvedb-nats-jrn");
    match node.stream::<Account>(journal).execute(&Deposit { cents: 1, nonce: 1 }) {
        Err(LocalExecuteError::Sync(SyncError::ReservedStream(id))) => assert_eq!(id.as_u128(), journal),
        other => panic!("expected ReservedStream, got {other:?}"),
    }
    assert_eq!(node.pending_count(), 0);
    assert_eq!(node.stream::<Account>(1u128).load().unwrap().version(), 0);
}

#[test]
fn sync_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<SyncNode>();
    send_sync::<varvedb_nats::LocalStream<Account>>();
    send_sync::<SyncError>();
    send_sync::<SyncReport>();
    let rt = runtime();
    let server = nats::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    rt.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        // The future can go to `tokio::spawn`.
        let sync = node.sync(&client);
        send(&sync);
        assert_eq!(sync.await.unwrap().rounds, 1);
    });
}

/// A node process, killed with SIGKILL when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a node process; the nonces it reports decided go to `decided`.
fn spawn_node(
    dir: &std::path::Path,
    url: &str,
    seed: u64,
    own: u128,
    decided: &Arc<Mutex<HashSet<u64>>>,
) -> Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sync-child"))
        .arg(dir)
        .arg(url)
        .arg(seed.to_string())
        .arg(own.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let decided = Arc::clone(decided);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(nonce) = line.strip_prefix("decided ").and_then(|n| n.parse().ok()) {
                decided.lock().unwrap().insert(nonce);
            }
        }
    });
    Child(child)
}

/// The nonce a command recorded in `command` carries.
fn nonce_of(command: &varvedb_nats::PendingCommand) -> u64 {
    match (command.decode::<Deposit>().unwrap(), command.decode::<Withdraw>().unwrap()) {
        (Some(d), _) => d.nonce,
        (_, Some(w)) => w.nonce,
        _ => panic!("a command is neither a deposit nor a withdrawal"),
    }
}

#[test]
fn nodes_killed_at_random_still_converge() {
    let seed = env("VARVEDB_SYNC_SEED", fastrand::u64(..));
    let kills = env("VARVEDB_SYNC_KILLS", 30);
    println!("seed {seed} (VARVEDB_SYNC_SEED={seed}), {kills} node kills");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = nats::NatsServer::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let decided = Arc::new(Mutex::new(HashSet::new()));
    let mut children: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(n, d)| spawn_node(d.path(), &server.url(), rng.u64(..), own(n), &decided))
        .collect();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.u64(50..400)));
        let n = rng.usize(..children.len());
        let child = &mut children[n].0;
        // Still running: a child that exits by itself has failed.
        assert!(child.try_wait().unwrap().is_none(), "seed {seed}: node {n} stopped by itself");
        // SIGKILL, and gone, before the next process opens the node.
        child.kill().unwrap();
        child.wait().unwrap();
        children[n] = spawn_node(dirs[n].path(), &server.url(), rng.u64(..), own(n), &decided);
    }
    std::thread::sleep(Duration::from_millis(300));
    for (n, child) in children.iter_mut().enumerate() {
        assert!(child.0.try_wait().unwrap().is_none(), "seed {seed}: node {n} stopped by itself");
    }
    drop(children);

    // Reopened here, synced to the end: one log, nothing pending, no account negative.
    let nodes: Vec<SyncNode> = dirs.iter().map(|d| open(d.path())).collect();
    let rt = runtime();
    let mut run = Run { seed, decided: HashSet::new(), next_nonce: 0, reports: Vec::new(), kills: 0 };
    rt.block_on(async {
        for _ in 0..2 {
            for node in &nodes {
                run.reports.extend(sync_until_done(node, &server.url(), None).await);
            }
        }
    });
    check_one_log(&run, &rt, &nodes, &server.url());
    let view = nodes[0].accepted().begin_read().unwrap();
    let mut nonces = HashSet::new();
    for id in accounts() {
        for event in Stream::<Account>::read(&nodes[0].accepted().stream::<Account>(id), &view, 1).unwrap() {
            let event = event.unwrap();
            let nonce = match (event.get::<Deposited>().unwrap(), event.get::<Withdrawn>().unwrap()) {
                (Some(d), _) => d.nonce.to_native(),
                (_, Some(w)) => w.nonce.to_native(),
                _ => panic!("an unknown event"),
            };
            assert!(nonces.insert(nonce), "seed {seed}: command {nonce} accepted twice");
        }
    }
    for node in &nodes {
        for id in accounts() {
            let state = node.accepted().stream::<Account>(id).load().unwrap().into_state();
            assert!(state.lowest >= 0, "seed {seed}: account {id} went negative");
        }
    }
    // Every command a process reported decided is accepted, or dropped after a conflict
    // and kept on record by its node, though the process that dropped it was killed.
    let mut dropped = HashSet::new();
    for node in &nodes {
        for d in node.dropped_commands().unwrap() {
            let nonce = nonce_of(&d.command);
            assert!(!nonces.contains(&nonce), "seed {seed}: command {nonce} dropped and accepted");
            dropped.insert(nonce);
        }
    }
    let decided = decided.lock().unwrap();
    for nonce in decided.iter() {
        assert!(
            nonces.contains(nonce) || dropped.contains(nonce),
            "seed {seed}: command {nonce} was neither accepted nor dropped"
        );
    }
    assert!(!decided.is_empty());
    println!("{} commands decided, {} accepted, {} dropped", decided.len(), nonces.len(), dropped.len());
}
