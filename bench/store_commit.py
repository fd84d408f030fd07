"""Atomic step commit on MongoDB: the candidates side by side, in one run.

    python bench/store_commit.py [--uri mongodb://...] [--steps 160] [--concurrency 8] [--rounds 3]

Without ``--uri`` it starts its own ``secantusd-py --storage-path :memory:`` (SecantusDB: a MongoDB-wire
server in Python; absolute numbers are that server's, the ratios are what to read). Every candidate
commits the same step — head moves one version, one history record, one inbound and one outbound
transcript entry, one inbox entry marked done — on fresh conversations whose lease the committer holds:

  txn          a multi-document transaction, one command per collection + commitTransaction
  stepdoc      one append-only step document guarded by a unique (key, seq) index, then its projections
               (head, transcript, inbox) rolled forward idempotently in one client-level bulkWrite
  head-intent  one guarded head update that carries the roll-forward intent (version and lease checked
               in one write), then one client-level bulkWrite (history, transcript, inbox, intent
               pulled, lease released)
  txn+bulk     what bot.store.mongo ships (MongoStepLog.commit): a transaction around one ordered
               client-level bulkWrite (guarded head update first) + commitTransaction

For each: commits/s with one committer and with ``--concurrency`` committers on distinct conversations,
and MongoDB commands (round trips) per commit counted with PyMongo command monitoring. Last, the round
trips of the whole hot path of one inbound text with one reply through the shipped store.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import AsyncMongoClient, UpdateMany, UpdateOne, monitoring

from bot.core.conversation import Cause, Conversation, Step, Transition
from bot.core.messages import Inbound, InboundKind, Outbound, OutboundKind
from bot.errors import StaleVersion
from bot.store import indexes as ix
from bot.store.base import InboxEntry, InboxKind, OutState, SendOutcome, StepLog, StepRecord
from bot.store.embedded import EmbeddedServer
from bot.store.mongo import MongoStore, _entry_doc, _head_doc

OWNER = "bench"
LEASE = 60.0


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands = 0
        self.names: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands += 1
        self.names[event.command_name] = self.names.get(event.command_name, 0) + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def make_step(key: str, seq: int, now: datetime) -> Step:
    pnid, subject = key.split(":")
    conv = Conversation.start(pnid, subject, "consent", "v1", "menu", "en", now, wa_id=subject)
    wamid = f"wamid.{key}.{seq}"
    msg = Inbound(id=wamid, phone_number_id=pnid, subject=subject, timestamp=1, kind=InboundKind.TEXT, text="hola")
    reply = Outbound(to=subject, kind=OutboundKind.TEXT, body="Hola! Elige una opción.")
    return Step(
        conversation=conv.evolve(version=seq, updated_at=now, consumed=(wamid,)), seq=seq, at=now,
        cause=Cause.INBOUND, cause_id=wamid, transitions=(Transition("text", "start", "menu"),),
        inbound=(msg,), outbox=(reply,), inbox_ids=(wamid,),
    )


class Candidates:
    """The hand-written alternatives, on the same collections and indexes as the shipped store."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], db: str) -> None:
        self.client = client
        self.db = client[db]
        self.name = db

    def _parts(self, step: Step) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        entries = StepLog.entries(step)
        docs = [{"_id": e.id, **_entry_doc(e, pos)} for pos, e in enumerate(entries)]
        return _head_doc(step.conversation), docs, StepRecord.of(step).to_doc()

    async def txn(self, step: Step) -> None:
        head, entries, record = self._parts(step)
        key = step.conversation.key
        async with self.client.start_session() as session, await session.start_transaction():
            r = await self.db[ix.CONVERSATIONS].update_one(
                {"_id": key, "version": step.seq - 1, "lease.owner": OWNER}, {"$set": head}, session=session)
            if r.matched_count == 0:
                raise StaleVersion(key)
            await self.db[ix.STEPS].insert_one({"_id": step.id, **record}, session=session)
            await self.db[ix.TRANSCRIPT].insert_many(entries, session=session)
            await self.db[ix.INBOX].update_many(
                {"_id": {"$in": list(step.inbox_ids)}}, {"$set": {"done": True, "done_at": step.at}}, session=session)

    async def stepdoc(self, step: Step) -> None:
        head, entries, record = self._parts(step)
        key, ns = step.conversation.key, self.name
        doc = {"_id": step.id, **record, "head": head, "entries": entries, "inbox": list(step.inbox_ids),
               "applied": False}
        await self.db[ix.STEPS].insert_one(doc)  # the commit point: unique (key, seq)
        ops: list[Any] = [
            UpdateOne({"_id": key, "version": step.seq - 1}, {"$set": head}, namespace=f"{ns}.{ix.CONVERSATIONS}"),
            *(UpdateOne({"_id": e["_id"]}, {"$setOnInsert": e}, upsert=True, namespace=f"{ns}.{ix.TRANSCRIPT}")
              for e in entries),
            UpdateMany({"_id": {"$in": list(step.inbox_ids)}}, {"$set": {"done": True, "done_at": step.at}},
                       namespace=f"{ns}.{ix.INBOX}"),
            UpdateOne({"_id": step.id}, {"$set": {"applied": True}}, namespace=f"{ns}.{ix.STEPS}"),
        ]
        await self.client.bulk_write(ops, ordered=True)

    async def head_intent(self, step: Step) -> None:
        head, entries, record = self._parts(step)
        key, ns = step.conversation.key, self.name
        intent = {"seq": step.seq, "record": record, "entries": entries, "inbox": list(step.inbox_ids)}
        r = await self.db[ix.CONVERSATIONS].update_one(
            {"_id": key, "version": step.seq - 1, "lease.owner": OWNER}, {"$set": head, "$push": {"_rf": intent}})
        if r.matched_count == 0:
            raise StaleVersion(key)
        ops: list[Any] = [
            UpdateOne({"_id": step.id}, {"$setOnInsert": record}, upsert=True, namespace=f"{ns}.{ix.STEPS}"),
            *(UpdateOne({"_id": e["_id"]}, {"$setOnInsert": e}, upsert=True, namespace=f"{ns}.{ix.TRANSCRIPT}")
              for e in entries),
            UpdateMany({"_id": {"$in": list(step.inbox_ids)}}, {"$set": {"done": True, "done_at": step.at}},
                       namespace=f"{ns}.{ix.INBOX}"),
            UpdateOne({"_id": key}, {"$pull": {"_rf": {"seq": step.seq}}, "$unset": {"lease": ""}},
                      namespace=f"{ns}.{ix.CONVERSATIONS}"),
        ]
        await self.client.bulk_write(ops, ordered=True)


async def prepare(store: MongoStore, keys: list[str], now: datetime) -> None:
    """Leased placeholder heads and one pending inbox entry per conversation and step."""
    for key in keys:
        await store.conversations.acquire(key, OWNER, now, LEASE)


async def measure(
    commit: Callable[[Step], Awaitable[Any]], keys: list[str], steps: int, concurrency: int, now: datetime
) -> float:
    """Commits/s: ``concurrency`` workers, each committing ``steps // concurrency`` first steps."""
    per = steps // concurrency
    queues = [keys[i * per : (i + 1) * per] for i in range(concurrency)]

    async def worker(mine: list[str]) -> None:
        for key in mine:
            await commit(make_step(key, 1, now))

    started = time.perf_counter()
    await asyncio.gather(*(worker(q) for q in queues))
    return per * concurrency / (time.perf_counter() - started)


async def run(uri: str, steps: int, concurrency: int, rounds: int) -> None:
    counter = Counter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, event_listeners=[counter])
    db = f"bench_{uuid.uuid4().hex[:8]}"
    store = MongoStore(client, db)
    await store.open()
    cands = Candidates(client, db)
    now = datetime.now(UTC)

    async def shipped(step: Step) -> None:
        await store.steps.commit(step, OWNER, LEASE, release=True)

    candidates: list[tuple[str, Callable[[Step], Awaitable[Any]]]] = [
        ("txn", cands.txn), ("stepdoc", cands.stepdoc), ("head-intent", cands.head_intent), ("txn+bulk", shipped)]
    rates: dict[tuple[str, int], list[float]] = {}
    # Interleaved rounds in rotating order: load from other processes on the machine hits every
    # candidate alike; the median of the rounds is reported.
    for round_ in range(rounds):
        for name, commit in candidates[round_ % 4 :] + candidates[: round_ % 4]:
            for conc in (1, concurrency):
                keys = [f"1000:{name}.{round_}.{conc}.{i}" for i in range(steps)]
                await prepare(store, keys, now)
                rates.setdefault((name, conc), []).append(await measure(commit, keys, steps, conc, now))
    table: list[tuple[str, float, float, float, dict[str, int]]] = []
    for name, commit in candidates:
        keys = [f"1000:{name}.rt.{i}" for i in range(20)]
        await prepare(store, keys, now)
        counter.commands, counter.names = 0, {}
        for key in keys:
            await commit(make_step(key, 1, now))
        per_commit = counter.commands / len(keys)
        one, many = statistics.median(rates[name, 1]), statistics.median(rates[name, concurrency])
        table.append((name, one, many, per_commit, {k: v // len(keys) for k, v in counter.names.items()}))

    print(f"server: {uri.rsplit('@', maxsplit=1)[-1]}   steps per run: {steps}   concurrency: {concurrency}   "
          f"median of {rounds} rounds")
    print(f"{'candidate':<12} {'commits/s x1':>13} {f'commits/s x{concurrency}':>14} {'round trips':>12}  commands")
    for name, one, many, rts, names in table:
        print(f"{name:<12} {one:>13.0f} {many:>14.0f} {rts:>12.1f}  {names}")

    # The hot path of one inbound text with one reply, through the shipped store.
    key = "1000:34600000099"
    wamid = "wamid.hot.1"
    msg = Inbound(id=wamid, phone_number_id="1000", subject="34600000099", timestamp=1, kind=InboundKind.TEXT,
                  text="hola")
    counter.commands, counter.names = 0, {}
    await store.inbox.put([InboxEntry(wamid, key, InboxKind.MESSAGE, 1, now, msg)])
    lease = await store.conversations.acquire(key, OWNER, now, LEASE)
    assert lease.acquired
    pending = await store.inbox.pending(key)
    assert [e.id for e in pending] == [wamid]
    [out_id] = await store.steps.commit(make_step(key, 1, now), OWNER, LEASE, release=True)
    assert await store.transcript.settle(out_id, OWNER, SendOutcome(OutState.ACCEPTED, wamid="wamid.out"),
                                         now + timedelta(seconds=1))
    print(f"hot path (inbox.put, acquire, pending, commit+release, settle): {counter.commands} round trips "
          f"{counter.names}")
    await client.drop_database(db)
    await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="MongoDB URI (default: start secantusd-py --storage-path :memory:)")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.uri:
        await run(args.uri, args.steps, args.concurrency, args.rounds)
        return
    async with EmbeddedServer(":memory:") as server:
        await run(server.uri, args.steps, args.concurrency, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
