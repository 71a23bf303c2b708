"""Which models a silo loads at start-up, from its data directory's migration state.

A migrating silo needs both models; a silo whose migration finished runs the new one even if
``silo.toml`` still names the old one (with a warning), so a restart after ``finish`` is not an
outage. A ``finish`` cut short by a crash after its docstore half is completed here, before
anything opens the index.
"""

from __future__ import annotations

import logging

from silobridge.core.errors import ConfigError
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.migration import files, record
from silobridge.silo_agent.migration.record import Stage
from silobridge.silo_agent.store.data import DOCSTORE_NAME, rebuild_lock
from silobridge.silo_agent.store.docstore import DocStore
from silobridge.silo_agent.store.generation import SOURCE, TARGET
from silobridge.silo_agent.store.index_home import open_index_home

log = logging.getLogger(__name__)


def models_for(config: SiloConfig) -> tuple[str, str | None]:
    """(the source model's spec, the target model's spec while a migration runs)."""
    path = config.data_dir / DOCSTORE_NAME
    if not path.exists():
        return config.model, None
    docstore = DocStore(path)
    try:
        current = record.load(docstore)
        if current is not None and current.stage is Stage.FINISHING:
            # Under the lock a serving silo's own finish holds: it may be finishing right now.
            with rebuild_lock(config.data_dir):
                current = record.load(docstore)
                if current is not None and current.stage is Stage.FINISHING:
                    slots = (SOURCE.index_dir, TARGET.index_dir)
                    home = open_index_home(config.data_dir, config.index, slots)
                    try:
                        files.promote_files(config.data_dir, home)
                    finally:
                        home.close()
                    record.retire(docstore, current)
                    docstore.delete_meta(record.RECORD_KEY)
                current = record.load(docstore)
        if current is not None:
            if config.model not in (current.source_model, current.target_model):
                raise ConfigError(
                    f"{config.source}: model = {config.model!r}, but this data directory is "
                    f"migrating from {current.source_model!r} to {current.target_model!r}; "
                    "name one of those"
                )
            return current.source_model, current.target_model
        retired = record.retired(docstore)
        if retired is not None and config.model == retired.model:
            log.warning(
                "silo.toml names model %r, but this data directory was migrated to %r: "
                "serving %r; update silo.toml",
                retired.model,
                retired.now,
                retired.now,
            )
            return retired.now, None
        return config.model, None
    finally:
        docstore.close()
