//! PyO3 glue: the `foxtive._core` extension module. No policy lives here;
//! this crate converts types and hands work between Python and foxtive-core.

mod awaitable;
mod backends;
mod bridge;
mod convert;
mod dlq;
mod engine;
mod errors;
mod keywords;
mod logs;
mod message;
mod native_backend;
mod observe;
mod policies;
mod postgres;
mod python_backend;
mod rabbitmq;
mod rate_limiter;
mod redis_commands;
mod redis_publish;
mod redis_streams;
mod registry;
mod resilient;
mod router;
mod runtime;
mod schedule;
mod sqlite;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    logs::install();
    m.add_function(wrap_pyfunction!(logs::take_logs, m)?)?;
    m.add_class::<awaitable::Ready>()?;
    m.add_class::<bridge::Completions>()?;
    m.add_class::<message::PyMessage>()?;
    m.add_class::<router::PyTaskRoutes>()?;
    m.add_class::<rate_limiter::PySharedRateLimiter>()?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<policies::PyRetryPolicy>()?;
    m.add_class::<policies::PyPoisonPillPolicy>()?;
    m.add_class::<policies::PyCircuitBreakerPolicy>()?;
    m.add_class::<policies::PyRateLimitPolicy>()?;
    m.add_class::<policies::PyTimeoutPolicy>()?;
    m.add_class::<policies::PyBatchPolicy>()?;
    m.add_class::<policies::PyWorkerConfig>()?;
    m.add_class::<policies::PyEngineConfig>()?;
    m.add_class::<message::PyFailureKind>()?;
    m.add_class::<message::PyRetryInfo>()?;
    m.add_class::<native_backend::NativeBackend>()?;
    m.add_class::<native_backend::PublishWait>()?;
    m.add_class::<backends::PyMemoryBackend>()?;
    m.add_class::<backends::PyDeadLetter>()?;
    m.add_class::<resilient::PyResilientBackend>()?;
    m.add_class::<resilient::PyReconnectStrategy>()?;
    m.add_class::<observe::PyMetrics>()?;
    m.add_class::<observe::PyHttpServer>()?;
    m.add_class::<dlq::PyDeadLetterStore>()?;
    m.add_class::<rabbitmq::PyRabbitMqBackend>()?;
    m.add_class::<rabbitmq::PyRabbitMqConfig>()?;
    m.add_class::<redis_streams::PyRedisStreamBackend>()?;
    m.add_class::<redis_streams::PyRedisStreamConfig>()?;
    m.add_class::<redis_commands::PyRedisCommands>()?;
    m.add_class::<redis_commands::PyRespReplies>()?;
    m.add_class::<redis_publish::PyRedisPublish>()?;
    sqlite::register(m)?;
    schedule::register(m)?;
    m.add_class::<postgres::PyPostgresBackend>()?;
    m.add_function(wrap_pyfunction!(postgres::postgres_enqueue, m)?)?;
    m.add_function(wrap_pyfunction!(postgres::postgres_migrate, m)?)?;
    m.add_function(wrap_pyfunction!(postgres::postgres_dedup_sql, m)?)?;
    m.add_function(wrap_pyfunction!(backends::redact_url, m)?)?;
    m.add_function(wrap_pyfunction!(registry::backend_kind, m)?)?;
    m.add_function(wrap_pyfunction!(registry::not_a_backend, m)?)?;
    m.add_function(wrap_pyfunction!(registry::open_backend, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::runtime_pid, m)?)?;
    Ok(())
}
