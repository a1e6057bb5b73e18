//! The supervisor as a library user runs it: a worker task that dies is restarted, and the job it
//! held goes back to its queue and runs.

mod common;

use common::RedisServer;
use redis::Commands;
use resque::supervisor::Command;
use resque::{Handler, Job, JobFailure, Supervisor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Panics when dropped: a bug in a handler's cleanup, which kills the worker task running it.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("handler cleanup bug");
        }
    }
}

/// The first run hangs (until USR1 kills it, and its cleanup panics); later runs complete.
struct Flaky {
    runs: AtomicUsize,
    completed: AtomicUsize,
}

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn perform(&self, _job: &Job) -> Result<(), JobFailure> {
        if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
            let _guard = PanicOnDrop;
            std::future::pending::<()>().await;
        }
        self.completed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_task_is_restarted_and_its_job_recovered() {
    let redis = RedisServer::start();
    let config = common::library_config(&redis, "queues = [\"default\"]");
    let flaky = Arc::new(Flaky {
        runs: AtomicUsize::new(0),
        completed: AtomicUsize::new(0),
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(
        Supervisor::new(config.clone())
            .handle("Flaky", flaky.clone())
            .run(rx),
    );
    let mut client = resque::Client::connect(&config.redis).await.unwrap();
    let id = client
        .enqueue("default", "Flaky", None, true)
        .await
        .unwrap();

    let wait = |what: &'static str, cond: Box<dyn Fn() -> bool + Send>| async move {
        for _ in 0..1500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    };
    let f = flaky.clone();
    wait(
        "the first run",
        Box::new(move || f.runs.load(Ordering::SeqCst) == 1),
    )
    .await;
    let first_worker: Vec<String> = redis.conn().smembers("resque:workers").unwrap();

    // USR1 kills the running job; dropping it panics and takes the worker task down.
    tx.send(Command::KillJobs).await.unwrap();
    let f = flaky.clone();
    wait(
        "the job to run again and complete",
        Box::new(move || f.completed.load(Ordering::SeqCst) == 1),
    )
    .await;
    assert_eq!(
        flaky.runs.load(Ordering::SeqCst),
        2,
        "the held job was put back and ran once more"
    );

    let mut c = redis.conn();
    let status: String = c.get(format!("resque:job:{id}:status")).unwrap();
    assert!(status.contains("\"status\":4"), "{status}");
    let workers: Vec<String> = c.smembers("resque:workers").unwrap();
    assert_eq!(workers.len(), 1, "one worker again: {workers:?}");
    assert_ne!(
        workers, first_worker,
        "a new worker (new id) replaced the dead one"
    );
    let queued: usize = c.llen("resque:queue:default").unwrap();
    assert_eq!(queued, 0);
    let failed: usize = c.llen("resque:failed").unwrap();
    assert_eq!(
        failed, 0,
        "the job was not failed: its worker died, it was recovered"
    );

    tx.send(Command::Stop { graceful: true }).await.unwrap();
    task.await.unwrap().unwrap();
}
