"""Any state a journaled transaction's death leaves is replayed to all new
(a hypothesis model; README, "Crash safety", *Recovery*).

Random transactions over a few keys (range writes, overlapping or into a
value or prepared file of the same transaction; values; prepared files;
deletes; read witnesses) are committed with the apply killed at any step,
its last write torn (a prefix, as a kill; any mix of old and new bytes, as
a power loss), or failing there and the undo killed at any step; the replay
is killed too and run again. In a crash-only world replay must bring every
key to all new without a JournalWarning (no witness may hold back a record
no other writer came after); with another writer that changed bytes a read
witness covers, that key is left to it, named in a warning. Moved from
``tests/test_durability_journal.py`` (past STYLE's ~800 lines).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import hypothesis
from hypothesis import strategies as st

from tests._journal_records import dead_journal
from zarr_rangelock import JournalWarning, PartialWriteError
from zarr_rangelock.store import _apply, _journal, _record

# ------------------------------------------------------------------ any state a death leaves

MODEL_KEYS = ["k0", "k1", "d/k2", "k3"]


class _Died(BaseException):
    """The process dies here (raised in place of a step of the apply)."""

    def __init__(self, *args: object) -> None:
        super().__init__()


class _Steps:
    """Counts the apply's steps (each range or temporary-file write, link,
    rename, unlink) and fails the ``at``-th: ``error`` raised before it, a
    write torn first (a prefix, as a kill; any mix of old and new bytes, as
    a power loss)."""

    def __init__(self, at: int, rng: random.Random, error: type[BaseException]) -> None:
        self.at, self.n, self.rng, self.error = at, 0, rng, error

    def step(self) -> None:
        self.n += 1
        if self.n == self.at:
            raise self.error(errno.ENOSPC, "No space left on device (injected)")

    def write(self, fd: int, data: memoryview, start: int, key: str = "") -> None:
        data = memoryview(data).cast("B")
        if self.n + 1 == self.at:
            w = self.rng.randrange(len(data) + 1)
            if self.rng.random() < 0.5 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_RDWR:
                old = os.pread(fd, len(data), start)
                mix = bytes(data[i] if self.rng.random() < 0.5 else old[i] for i in range(w))
                os.pwrite(fd, mix, start)
            else:
                os.pwrite(fd, data[:w], start)
            if w and self.error is OSError:
                self.n += 1
                raise PartialWriteError(errno.ENOSPC, "injected", key, start, len(data), w)
        self.step()
        os.pwrite(fd, data, start)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        class Os:
            def __getattr__(_, name: str) -> object:
                real = getattr(os, name)
                if name not in ("link", "replace", "rename", "unlink"):
                    return real
                return lambda *a: (self.step(), real(*a))[1]

        saved = _apply.write_keyed, _apply.write_range, _apply.os
        _apply.write_keyed, _apply.write_range = self.write, self.write
        _apply.os = Os()  # type: ignore[assignment]
        try:
            yield
        finally:
            _apply.write_keyed, _apply.write_range, _apply.os = saved


@contextlib.contextmanager
def _old_bytes_max(cap: int | None) -> Iterator[None]:
    """``_record.OLD_BYTES_MAX`` set to ``cap`` (None: as it is) while the
    transaction is committed: the model's keys are 48 bytes at most, so a
    small cap is how its range writes lose their old bytes and its read
    witnesses pass the limit (cut at it, the rest dropped)."""
    if cap is None:
        yield
        return
    saved = _apply.OLD_BYTES_MAX, _record.OLD_BYTES_MAX
    _apply.OLD_BYTES_MAX = _record.OLD_BYTES_MAX = cap
    try:
        yield
    finally:
        _apply.OLD_BYTES_MAX, _record.OLD_BYTES_MAX = saved


ModelOp = tuple[str, str, int, bytes, int]  # kind (R, S, D, F, W), key, start, bytes, length

_MODEL_OPS = st.lists(
    st.tuples(
        st.sampled_from("RRRWWWSDF"),
        st.sampled_from(MODEL_KEYS),
        st.integers(0, 63),  # start: modulo the key's size (a read witness's: + 8)
        st.binary(max_size=24),  # what R, S or F writes
        st.integers(0, 64),  # a read witness's length
    ),
    min_size=1,
    max_size=8,
)


class Death(NamedTuple):
    """One dead transaction of the model: what :func:`_died` makes and
    :func:`_replay` replays (``replay_at``, ``seed``), drawn whole by
    :data:`_DEATHS`."""

    initial: dict[str, bytes | None]
    ops: list[ModelOp]
    cap: int | None
    at: int
    undo_at: int | None
    replay_at: int | None
    seed: int


def _died(
    root: Path, death: Death, rng: random.Random
) -> tuple[dict[str, bytes | None], dict[str, _journal._KeyOps]]:
    """The model's dead transaction ``death``: ``initial`` written under ``root``,
    ``ops`` collected (``W``: a read witness, ``Transaction.add_witness``),
    committed with :func:`_old_bytes_max` ``cap``, its record complete in a
    dead process's journal file, then killed at step ``at`` of the apply
    (its last write torn), or failed there (ENOSPC) and killed at step
    ``undo_at`` of the undo. Returns every key's value as the transaction
    leaves it and the ops as committed (read witnesses clipped)."""
    initial, ops, cap, at, undo_at = death.initial, death.ops, death.cap, death.at, death.undo_at
    model = dict(initial)
    for key, value in initial.items():
        if value is not None:
            (root / key).parent.mkdir(exist_ok=True)
            (root / key).write_bytes(value)
    txn = _journal.Transaction(_journal.Journal(str(root)))
    for kind, key, start, data, length in ops:
        cur = model[key]
        if kind == "R":
            if not cur:
                continue
            start %= len(cur)
            data = data[: len(cur) - start]
            if not data:
                continue
            disk = (root / key).stat().st_size if (root / key).is_file() else None
            txn.add_range(key, data, start, disk)
            model[key] = cur[:start] + data + cur[start + len(data) :]
        elif kind == "W":
            # Any range of the key as the transaction found it: over its
            # own writes or not, past the file's end, of a key it only
            # reads, of a key it replaces (ignored) or that is missing.
            if (root / key).is_file():
                start %= (root / key).stat().st_size + 8
            txn.add_witness(key, start, length)
        elif kind == "S":
            txn.add_set(key, data)
            model[key] = data
        elif kind == "D":
            txn.add_delete(key)
            model[key] = None
        else:
            (root / key).parent.mkdir(exist_ok=True)
            name = f"{key}.{rng.randbytes(16).hex()}.partial"
            (root / name).write_bytes(data)
            txn.add_file(key, name, (root / name).stat().st_ino, len(data))
            model[key] = data
    hypothesis.assume(txn.ops)
    apply = _apply._Apply(str(root), False)
    try:
        with _old_bytes_max(cap):
            apply.prepare(txn.ops)
            raw = _record._encode(txn.ops)
        if undo_at is None:
            with _Steps(at, rng, _Died).installed(), contextlib.suppress(_Died):
                apply.run(txn.ops, False, None)
        else:
            with _Steps(at, rng, OSError).installed(), contextlib.suppress(OSError):
                apply.run(txn.ops, False, None)
                hypothesis.assume(False)  # applied whole: no undo
            with _Steps(undo_at, rng, _Died).installed(), contextlib.suppress(_Died):
                apply.rollback()
                hypothesis.assume(False)  # undone whole: the record retired
    finally:
        apply.close()
    dead_journal(root, raw)
    return model, txn.ops


def _replay(root: Path, replay_at: int | None, rng: random.Random) -> None:
    """Replay the root's journal, first killed at step ``replay_at`` (if
    any) and run again."""
    journal = _journal.Journal(str(root))
    if replay_at is not None:
        with _Steps(replay_at, rng, _Died).installed(), contextlib.suppress(_Died):
            journal.recover(lambda keys: contextlib.nullcontext(), contextlib.nullcontext)
    journal.recover(lambda keys: contextlib.nullcontext(), contextlib.nullcontext)


def _contents(root: Path) -> dict[str, bytes | None]:
    return {k: (root / k).read_bytes() if (root / k).is_file() else None for k in MODEL_KEYS}


_DEATHS = st.builds(
    Death,
    initial=st.fixed_dictionaries(
        {k: st.one_of(st.none(), st.binary(min_size=1, max_size=48)) for k in MODEL_KEYS}
    ),
    ops=_MODEL_OPS,
    cap=st.sampled_from([None, None, 12, 40]),
    at=st.integers(1, 30),
    undo_at=st.one_of(st.none(), st.integers(1, 12)),
    replay_at=st.one_of(st.none(), st.integers(1, 30)),
    seed=st.integers(0, 2**32),
)


@hypothesis.settings(max_examples=250, deadline=None)
@hypothesis.given(death=_DEATHS)
def test_a_complete_record_brings_its_transaction_to_all_new_from_any_state_its_death_left(
    death: Death,
) -> None:
    # A transaction of random ops (range writes, overlapping or not, also
    # into a value or a prepared file of the same transaction; values,
    # prepared files, deletes; read witnesses, over its own writes or not,
    # past a key's end or OLD_BYTES_MAX (``cap``), of keys it only reads;
    # keys there before or not) over a few keys, its record complete; the
    # process then dies at step ``at`` of the apply, its last write torn. Or
    # the apply fails there (ENOSPC) and the process dies at step
    # ``undo_at`` of the undo. Replay (itself killed at ``replay_at`` and
    # run again) must bring every key to the transaction's new value,
    # without a JournalWarning: in a world where no other writer came after
    # the death, no witness may hold it back.
    rng = random.Random(death.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        model, _ = _died(root, death, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("error", JournalWarning)
            _replay(root, death.replay_at, rng)
        assert _contents(root) == model


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(
    death=_DEATHS, other=st.lists(st.integers(0, 2**16), min_size=1, max_size=3), data=st.data()
)
def test_a_key_whose_read_witness_another_writer_changed_after_the_death_is_left_to_it(
    death: Death, other: list[int], data: st.DataObject
) -> None:
    # The model's dead transaction, as above, with one more read witness
    # (at least) of a key it does not replace, at its end; then another
    # writer changes bytes of one key, in place, that a read witness of the
    # record covers and none of its range writes does (``other`` picks
    # them). Replay must leave that key as it finds it (the other writer's
    # bytes, and whatever the dead apply left of its own writes), naming it
    # in a JournalWarning, and bring every other key to all new.
    initial = death.initial
    patched = [
        key
        for key, value in initial.items()
        if value is not None and not any(op[1] == key and op[0] in "SDF" for op in death.ops)
    ]
    hypothesis.assume(patched)
    read = data.draw(st.sampled_from(patched), label="a key read")
    start = data.draw(st.integers(0, len(initial[read] or b"") - 1), label="from")
    witness = ("W", read, start, b"", data.draw(st.integers(1, 64), label="bytes"))
    death = death._replace(ops=[*death.ops, witness])
    rng = random.Random(death.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        model, committed = _died(root, death, rng)
        places = {  # each key's bytes read and not written
            name: sorted(
                {i for s, n in k.reads for i in range(s, s + n)}
                - {i for s, new in k.ranges for i in range(s, s + len(new))}
            )
            for name, k in committed.items()
            if not k.replaces  # (its witnesses are of the file it replaces, maybe gone)
        }
        keys = sorted(name for name, where in places.items() if where)
        hypothesis.assume(keys)
        key = keys[other[0] % len(keys)]
        changed = {places[key][pick % len(places[key])]: 1 + pick % 255 for pick in other}
        with open(root / key, "r+b") as f:
            for at_byte, flip in changed.items():
                was = os.pread(f.fileno(), 1, at_byte)[0]
                os.pwrite(f.fileno(), bytes([was ^ flip]), at_byte)
        found = (root / key).read_bytes()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _replay(root, death.replay_at, rng)
        messages = [str(w.message) for w in caught if issubclass(w.category, JournalWarning)]
        assert messages, "the changed key was replayed over without a warning"
        recorded = [k for k, o in committed.items() if o.replaces or o.ranges or o.reads]
        for message in messages:
            assert f"left 1 of its {len(recorded)} keys" in message
            assert f"key {key!r} holds at bytes " in message
            assert "which the transaction read and did not write" in message
        got = _contents(root)
        assert got[key] == found
        assert got == {**model, key: found}
