"""A pool from the configuration: ``open_pool(Config.load())``.

Kept apart from ``realtime_batch.config`` so that the configuration, which both pools
read, imports neither of them (no import cycle).
"""

from __future__ import annotations

from typing import Any

from realtime_batch.config import Config, ConfigError

__all__ = ["open_pool"]


def open_pool(config: Config, **options: Any) -> Any:
    """The pool named by ``[pool] backend``: ``LocalPool`` or ``AzureBatchPool``.

    Args:
        config: the loaded configuration (``Config.load()``).
        **options: passed to the pool's constructor (``LocalPool``) or ``from_config``.

    Raises:
        ConfigError: an unknown backend or an invalid ``[engine]`` setting.
    """
    backend = config["pool.backend"]
    if backend == "local":
        from realtime_batch.emulator.local_pool import LocalPool
        from realtime_batch.engine.tasks import parse_size

        try:
            heap = config["engine.max_jvm_heap"]
            engine_options: dict[str, Any] = {
                "allow_jvm_options": config["engine.allow_jvm_options"],
                "max_jvm_heap": parse_size(heap) if heap else None,
                "max_output": parse_size(config["engine.max_output"]),
            }
        except ValueError as exc:
            raise ConfigError(f"[engine]: {exc}") from None
        return LocalPool(
            engines=config["pool.engines"],
            transport=config["transport.url"],
            task_files=config["pool.task_files"],
            input_files=config["pool.input_files"],
            **{**engine_options, **options},
        )
    if backend == "azure-batch":
        from realtime_batch.orchestrator.azure_batch import AzureBatchPool

        return AzureBatchPool.from_config(config, **options)
    raise ConfigError(f"pool.backend must be 'local' or 'azure-batch', not {backend!r}")
