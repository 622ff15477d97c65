"""Stress runner for zarr-rangelock: random concurrent load, an oracle, a verdict.

Run ``python -m stress --help``. Modules, top to bottom:

- :mod:`stress.signature` - the bytes every write puts down, naming its writer.
- :mod:`stress.records` - what workers record (writes, reads), a run's
  history, findings and a check's result; both modes' checkers use them.
- :mod:`stress.oracle` - the byte mode's checker (lost updates, torn reads,
  ...); pure, no store involved.
- :mod:`stress.targets` - the locked store, or the bare store for ``--unlocked``.
- :mod:`stress.ops` - the op-kind registry and the worker context.
- :mod:`stress.runner` - threads + asyncio tasks driving the ops; hang watchdog.
- :mod:`stress.byte_runner` - the byte mode's run (the default): keys, their
  setup, the final reads.
- :mod:`stress.key_ops` - the byte mode's ops on whole keys (``exists``,
  ``getsize``, the listings, ``set_if_not_exists``, ``delete_dir``, ``clear``).
- :mod:`stress.shard_model` - the shard mode's numpy model: element values that
  name their write, and the records of boxes written and read; pure.
- :mod:`stress.shard_check` - the shard mode's checker of reads and the final
  array against those records; pure.
- :mod:`stress.shard_ops` - the shard mode's op kinds (``arr[sel] = v``, reads).
- :mod:`stress.shard_runner` - the shard mode's run: the sharded array, the
  stock prefill, the final reads (``--shard``).
- :mod:`stress.processes` - ``--processes N``: the load in N worker processes
  on one LocalStore root, histories merged, one check (a runner plug-in): the
  coordinator.
- :mod:`stress.worker` - what each of those processes runs: its part of the
  load, its checkpoints, what it sends back.
- :mod:`stress.kills` - ``--kill-every``: the kills' bookkeeping, and each
  worker process's file of intents and records, read back when it is killed.
- :mod:`stress.report` - the report as data (``--json``) and as text.
- :mod:`stress.cli` - argument parsing and exit status.
"""

# The plug-ins register themselves with the runner on import: the byte and the
# shard load in stress.runner.LOADS, the multi-process driver in
# stress.runner.DRIVERS.
import stress.byte_runner
import stress.processes
import stress.shard_runner  # noqa: F401
