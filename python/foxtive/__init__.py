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
from .backends import Backend, Incoming, MemoryBackend
from .errors import (
    AlreadySettledError,
    BackendError,
    ConfigError,
    FoxtiveError,
    PayloadError,
    PermanentError,
    RetryableError,
    ShutdownError,
)
from .middleware import Middleware, RetryHandler, TimeoutMiddleware, TracingMiddleware
from .pool import LoadBalancingStrategy, WorkerPool, WorkerPoolBuilder
from .redis_streams import RedisStreamBackend, RedisStreamConsumerConfig
from .worker import BatchWorker, RetryInfo, Worker

__all__ = [
    "AlreadySettledError",
    "Backend",
    "BackendError",
    "BatchWorker",
    "ConfigError",
    "DeadLetter",
    "FoxtiveError",
    "Incoming",
    "LoadBalancingStrategy",
    "MemoryBackend",
    "Message",
    "Middleware",
    "PayloadError",
    "PermanentError",
    "RedisStreamBackend",
    "RedisStreamConsumerConfig",
    "RetryHandler",
    "RetryInfo",
    "RetryableError",
    "ShutdownError",
    "TimeoutMiddleware",
    "TracingMiddleware",
    "Worker",
    "WorkerPool",
    "WorkerPoolBuilder",
]
