//! Runners: keep a processor or projection following the log, on tokio or on a thread.

use std::time::Duration;

use crate::error::Error;
use crate::process::{Processor, ProcessorError, Progress, Projection};
use crate::store::{Varve, WeakVarve};

/// Something a [`Runner`] can drive: a [`Projection`] or a [`Processor`].
pub trait Runnable: Send + 'static {
    /// The name its checkpoint is stored under.
    fn name(&self) -> &str;

    /// Processes the next batch after its checkpoint (blocking).
    ///
    /// # Errors
    /// As [`Projection::step`] / [`Processor::step`].
    fn step(&mut self, db: &Varve) -> Result<Progress, ProcessorError>;
}

impl Runnable for Projection {
    fn name(&self) -> &str {
        Projection::name(self)
    }
    fn step(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        Projection::step(self, db)
    }
}

impl Runnable for Processor {
    fn name(&self) -> &str {
        Processor::name(self)
    }
    fn step(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        Processor::step(self, db)
    }
}

/// Steps until a step finds nothing new; returns the checkpoint.
pub(crate) fn catch_up<P: Runnable + ?Sized>(p: &mut P, db: &Varve) -> Result<u64, ProcessorError> {
    loop {
        let progress = p.step(db)?;
        if progress.scanned == 0 {
            return Ok(progress.checkpoint);
        }
    }
}

enum Task<P> {
    Tokio(tokio::task::JoinHandle<Result<P, ProcessorError>>),
    Thread(std::thread::JoinHandle<Result<P, ProcessorError>>),
}

/// Runs a processor in the background: catches up, then follows new commits, until stopped
/// or until a handler fails.
///
/// Blocking work (the processor's steps) runs on tokio's blocking pool, never on the
/// runtime's workers. [`spawn`](Self::spawn) needs a tokio runtime;
/// [`spawn_thread`](Self::spawn_thread) needs none (it runs on its own thread).
///
/// Commits made through this process's `Varve` wake the runner at once; commits by other
/// processes are noticed by polling (every 100 ms by default).
///
/// ```
/// use varvedb::{Event, ExpectedVersion, NewEvent, Projection, Runner, Table, Varve};
///
/// #[derive(Event)]
/// struct Clicked;
/// const CLICKS: Table<String, u64> = Table::new("clicks", "total");
///
/// # let dir = tempfile::tempdir().unwrap();
/// let db = Varve::open(dir.path())?;
/// let clicks = Projection::new("clicks").on::<Clicked>(|tx, _e, _meta| {
///     let n = tx.get(&CLICKS, &"all".to_owned())?.unwrap_or(0);
///     tx.insert(&CLICKS, &"all".to_owned(), &(n + 1))?;
///     Ok(())
/// });
/// let runner = Runner::spawn_thread(&db, clicks);
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::from_event(&Clicked)?, NewEvent::from_event(&Clicked)?])?;
/// while db.lag("clicks")? > 0 {
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// }
/// runner.stop_blocking()?;
/// assert_eq!(db.begin_read()?.get(&CLICKS, &"all".to_owned())?, Some(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Runner<P> {
    name: String,
    db: Varve,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<Task<P>>,
}

impl<P> std::fmt::Debug for Runner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("name", &self.name).finish_non_exhaustive()
    }
}

/// How often a caught-up runner looks for commits by other processes.
pub const DEFAULT_POLL: Duration = Duration::from_millis(100);

impl<P: Runnable> Runner<P> {
    /// Starts `processor` as a tokio task.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(db: &Varve, processor: P) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let name = processor.name().to_owned();
        let task = tokio::spawn(run(db.downgrade(), processor, stopped, DEFAULT_POLL));
        Runner { name, db: db.clone(), stop, task: Some(Task::Tokio(task)) }
    }

    /// Starts `processor` on a thread of its own, for programs without tokio.
    ///
    /// # Panics
    /// If the thread or its small private runtime cannot be created.
    pub fn spawn_thread(db: &Varve, processor: P) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let name = processor.name().to_owned();
        let thread_db = db.downgrade();
        let thread = std::thread::Builder::new()
            .name(format!("varvedb-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("build a current-thread runtime");
                rt.block_on(run(thread_db, processor, stopped, DEFAULT_POLL))
            })
            .expect("spawn a runner thread");
        Runner { name, db: db.clone(), stop, task: Some(Task::Thread(thread)) }
    }

    /// How many committed events the processor has not processed yet.
    ///
    /// # Errors
    /// A storage error.
    pub fn lag(&self) -> Result<u64, Error> {
        self.db.lag(&self.name)
    }

    /// The processor's checkpoint: the last seq it processed.
    ///
    /// # Errors
    /// A storage error.
    pub fn checkpoint(&self) -> Result<u64, Error> {
        self.db.checkpoint(&self.name)
    }

    /// Whether the runner has stopped by itself (a handler failed); [`stop`](Self::stop)
    /// then returns the error.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        match &self.task {
            Some(Task::Tokio(t)) => t.is_finished(),
            Some(Task::Thread(t)) => t.is_finished(),
            None => true,
        }
    }

    /// Stops gracefully: the batch in progress finishes and commits, then the processor is
    /// handed back.
    ///
    /// # Errors
    /// The error that stopped the runner earlier, if one did.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: the stop signal is sent at the first poll, and the runner stops
    /// on its own; only the processor handed back is lost if this future is dropped.
    pub async fn stop(mut self) -> Result<P, ProcessorError> {
        self.stop.send_replace(true);
        let Some(task) = self.task.take() else {
            return Err(Error::Internal("a runner was stopped twice").into());
        };
        match task {
            Task::Tokio(t) => {
                t.await.unwrap_or_else(|_| Err(Error::Internal("a runner task panicked").into()))
            }
            Task::Thread(t) => tokio::task::spawn_blocking(move || join(t))
                .await
                .unwrap_or_else(|_| Err(Error::Internal("a runner thread panicked").into())),
        }
    }

    /// [`stop`](Self::stop) for callers without an async context (thread runners).
    ///
    /// # Errors
    /// As [`stop`](Self::stop).
    ///
    /// # Panics
    /// For a runner started with [`spawn`](Self::spawn): outside its runtime, and inside any
    /// async context (use [`stop`](Self::stop) there).
    pub fn stop_blocking(mut self) -> Result<P, ProcessorError> {
        self.stop.send_replace(true);
        let Some(task) = self.task.take() else {
            return Err(Error::Internal("a runner was stopped twice").into());
        };
        match task {
            Task::Thread(t) => join(t),
            Task::Tokio(t) => tokio::runtime::Handle::current()
                .block_on(t)
                .unwrap_or_else(|_| Err(Error::Internal("a runner task panicked").into())),
        }
    }
}

impl<P> Drop for Runner<P> {
    /// A runner dropped without [`stop`](Runner::stop) stops after its current step.
    ///
    /// A thread runner ([`spawn_thread`](Runner::spawn_thread)) is waited for: when `drop`
    /// returns, its thread has ended and holds the store no longer, so the store can be
    /// reopened at once once the other handles are gone. A tokio runner
    /// ([`spawn`](Runner::spawn)) cannot be waited for inside `drop` (that would block the
    /// runtime); it stops in the background. Between steps it does not hold the store, but
    /// during a step it does, until the step ends: await [`stop`](Runner::stop) to know it
    /// is done.
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(Task::Thread(thread)) = self.task.take() {
            // Its error (if it failed) had no one to go to; the checkpoint holds the progress.
            drop(thread.join());
        }
    }
}

fn join<P>(t: std::thread::JoinHandle<Result<P, ProcessorError>>) -> Result<P, ProcessorError> {
    t.join().unwrap_or_else(|_| Err(Error::Internal("a runner thread panicked").into()))
}

/// The runner's loop. It holds the store only while a step runs: between steps, dropping
/// every other handle closes the store, and the loop then ends.
async fn run<P: Runnable>(
    db: WeakVarve,
    mut processor: P,
    mut stop: tokio::sync::watch::Receiver<bool>,
    poll: Duration,
) -> Result<P, ProcessorError> {
    let Some(mut commits) = db.upgrade().map(|db| db.watch_last_seq()) else {
        return Ok(processor);
    };
    loop {
        if *stop.borrow_and_update() {
            return Ok(processor);
        }
        // Seen before the step: a commit during the step wakes the wait below.
        commits.borrow_and_update();
        let Some(step_db) = db.upgrade() else {
            return Ok(processor);
        };
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = processor.step(&step_db);
            (processor, result)
        })
        .await
        .map_err(|e| {
            let what = e.try_into_panic().ok().and_then(|p| {
                p.downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
            });
            ProcessorError::Panicked(what.unwrap_or_else(|| "unknown panic".to_owned()))
        })?;
        processor = back;
        if result?.scanned > 0 {
            continue; // more may be waiting
        }
        tokio::select! {
            _ = commits.changed() => {}
            changed = stop.changed() => {
                // The `Runner` is gone without calling `stop`: stop too.
                if changed.is_err() {
                    return Ok(processor);
                }
            }
            () = tokio::time::sleep(poll) => {}
        }
    }
}
