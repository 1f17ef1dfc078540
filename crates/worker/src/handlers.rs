//! Custom task handlers: a name the worker advertises, and a function (blocking or async) that
//! turns a task's data into a result.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tatzelwurm_protocol::{AttemptRef, Data};

/// What a handler is given.
#[derive(Clone, Debug)]
pub struct TaskInput {
    /// Which attempt of which task.
    pub attempt: AttemptRef,
    /// The task's name.
    pub name: Option<String>,
    /// The custom payload's data (MessagePack; see [`Data::decode`]).
    pub data: Data,
    /// The task's user data key.
    pub user_key: Option<String>,
    /// The task's user data as of the previous attempt.
    pub user_data: Data,
}

/// What a handler returns on success.
#[derive(Clone, Debug, Default)]
pub struct TaskOutput {
    /// The result, kept in the attempt.
    pub output: Data,
    /// New user data for the task, if the handler changes it.
    pub user_data: Option<Data>,
}

/// A future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<TaskOutput, String>> + Send>>;

/// One handler: a blocking function (run on a blocking thread) or an async one.
#[derive(Clone)]
pub enum Handler {
    /// Runs on its own thread; a kill reports the attempt at once but cannot stop the thread.
    Blocking(Arc<dyn Fn(TaskInput) -> Result<TaskOutput, String> + Send + Sync>),
    /// Runs on the runtime; a kill drops the future.
    Async(Arc<dyn Fn(TaskInput) -> HandlerFuture + Send + Sync>),
}

/// The handlers a worker serves, by name.
#[derive(Clone, Default)]
pub struct Handlers {
    map: BTreeMap<String, Handler>,
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a blocking handler.
    pub fn blocking<F>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskInput) -> Result<TaskOutput, String> + Send + Sync + 'static,
    {
        self.map.insert(name.into(), Handler::Blocking(Arc::new(f)));
        self
    }

    /// Registers an async handler.
    pub fn asynchronous<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskInput) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<TaskOutput, String>> + Send + 'static,
    {
        self.map.insert(
            name.into(),
            Handler::Async(Arc::new(move |i| Box::pin(f(i)))),
        );
        self
    }

    /// The handler of that name.
    pub fn get(&self, name: &str) -> Option<&Handler> {
        self.map.get(name)
    }

    /// The names, as advertised at the handshake.
    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// The demonstration handlers of the `workwurm` binary: `echo` returns its data and stores it
    /// as user data; `fail` fails with its data (a string) as the error.
    pub fn builtin() -> Self {
        Handlers::new()
            .blocking("echo", |i| {
                Ok(TaskOutput {
                    output: i.data.clone(),
                    user_data: Some(i.data),
                })
            })
            .blocking("fail", |i| {
                Err(i
                    .data
                    .decode::<String>()
                    .unwrap_or_else(|_| "failed on purpose".into()))
            })
    }
}
