"""foxtive: background workers for Python with a Rust hot path.

    import foxtive

    async def send_email(message: foxtive.Message) -> None:
        payload = message.json()
        ...

    backend = foxtive.MemoryBackend("emails")
    pool = foxtive.WorkerPoolBuilder("email-pool").add_worker(send_email).build()
    pool.run(backend)
"""

from ._core import DeadLetter, Message
from ._core import __version__ as __version__
from .app import App
from .backends import Backend, Incoming, MemoryBackend
from .dlq import DeadLetterQueue, FileDLQ, MemoryDLQ, RedisDLQ
from .errors import (
    AlreadySettledError,
    BackendError,
    ConfigError,
    FoxtiveError,
    PayloadError,
    PermanentError,
    RetryableError,
    ShutdownError,
    TaskError,
    UnknownTaskError,
)
from .middleware import Middleware
from .nats import NatsBackend, NatsConsumerConfig
from .observe import HealthServer, PrometheusCollector
from .otel import OpenTelemetryMiddleware
from .policies import (
    BatchConfig,
    BatchMiddleware,
    CircuitBreakerMiddleware,
    PoisonPillTracker,
    RateLimitMiddleware,
    RetryHandler,
    TimeoutMiddleware,
)
from .pool import LoadBalancingStrategy, WorkerPool, WorkerPoolBuilder
from .postgres import PostgresBackend
from .rabbitmq import RabbitMqBackend, RabbitMqConsumerConfig
from .redis_streams import RedisStreamBackend, RedisStreamConsumerConfig
from .resilient import ReconnectStrategy, ResilientBackend
from .sqlite import SqliteBackend
from .supervisor import Supervisor
from .tasks import Task, TaskHandle
from .tracing import TracingMiddleware
from .urls import backend_from_url
from .worker import BatchWorker, RetryInfo, Worker

__all__ = [
    "AlreadySettledError",
    "App",
    "Backend",
    "BackendError",
    "BatchConfig",
    "BatchMiddleware",
    "BatchWorker",
    "CircuitBreakerMiddleware",
    "ConfigError",
    "DeadLetter",
    "DeadLetterQueue",
    "FileDLQ",
    "FoxtiveError",
    "HealthServer",
    "Incoming",
    "LoadBalancingStrategy",
    "MemoryBackend",
    "MemoryDLQ",
    "Message",
    "Middleware",
    "NatsBackend",
    "NatsConsumerConfig",
    "OpenTelemetryMiddleware",
    "PayloadError",
    "PermanentError",
    "PoisonPillTracker",
    "PostgresBackend",
    "PrometheusCollector",
    "RabbitMqBackend",
    "RabbitMqConsumerConfig",
    "RateLimitMiddleware",
    "ReconnectStrategy",
    "RedisDLQ",
    "RedisStreamBackend",
    "RedisStreamConsumerConfig",
    "ResilientBackend",
    "RetryHandler",
    "RetryInfo",
    "RetryableError",
    "ShutdownError",
    "SqliteBackend",
    "Supervisor",
    "Task",
    "TaskError",
    "TaskHandle",
    "TimeoutMiddleware",
    "TracingMiddleware",
    "UnknownTaskError",
    "Worker",
    "WorkerPool",
    "WorkerPoolBuilder",
    "backend_from_url",
]
