//! The thread every `local` sandbox process is started from.

use super::LocalProviderError;
use crate::provider::ProviderError;

type SpawnJob = Box<dyn FnOnce() + Send>;

/// The one thread that starts sandbox processes.
///
/// Spawning forks the broker (changing uid rules out posix_spawn), which should not stall the
/// runtime's workers in a burst of starts. It cannot go to tokio's blocking pool either:
/// bubblewrap's `--die-with-parent` is `PR_SET_PDEATHSIG`, which fires when the *thread* that
/// forked it exits, and pool threads exit when idle — killing every sandbox they started.
/// This thread lives as long as any sandbox of the provider.
#[derive(Clone)]
pub(super) struct Spawner {
    /// Unbounded as a channel, bounded in use: every job is a StartProcess call waiting for its
    /// result while holding one of the broker's `SANDBOX_MAX_STREAMS` stream permits.
    jobs: std::sync::mpsc::Sender<SpawnJob>,
}

impl Spawner {
    pub(super) fn start() -> Result<Spawner, LocalProviderError> {
        let runtime = tokio::runtime::Handle::current();
        let (jobs, queue) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                // tokio::process registers children with the runtime's reaper from here.
                let _runtime = runtime.enter();
                while let Ok(job) = queue.recv() {
                    // This thread must outlive every sandbox it started (see above): a panicking
                    // job fails its own start only.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a sandbox process start panicked");
                    }
                }
            })
            .map_err(|source| LocalProviderError::Io { path: "sandbox-spawner thread".into(), source })?;
        Ok(Spawner { jobs })
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: SpawnJob = Box::new(move || {
            let _ = done.send(job());
        });
        let gone = || ProviderError::Unavailable("the process spawner thread is gone".into());
        self.jobs.send(job).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}
