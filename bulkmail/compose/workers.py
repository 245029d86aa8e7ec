"""Render and build mails on every core, handing them back in list order with bounded memory.

The main process reads the CSV (duplicates and suppressions need the whole list's state)
and sends or writes the mails; worker processes do the CPU work of rendering, inlining
and building. At most ``2 * workers`` batches are in flight, so memory stays flat
however long the list, and a slow consumer (an SMTP server at its rate limit) holds the
workers back instead of filling memory.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from itertools import chain, islice

from bulkmail.compose.attachments import Attachments
from bulkmail.compose.message import POLICY, MessageBuilder
from bulkmail.compose.render import Renderer
from bulkmail.errors import CampaignError
from bulkmail.models import Campaign, OutgoingMail, Recipient

# Mails a worker builds per task: a task costs ~0.5 ms of pickling, queueing and waking
# threads on two cores, so the more the better, but the bytes of ``2 * workers`` tasks are
# in memory at once.
BATCH = 16  # with their bytes, at least (a mail may carry megabytes of attachments)
BATCH_BYTES = 1 << 20  # and more while a task's bytes stay under this, up to:
COUNTING_BATCH = 64  # without them (a check): 5-7 % faster than 16 for 20,000 rows
# Mails built in the main process before the workers start (see build_in_order).
WARM_UP = 2
# Below this many recipients, starting processes costs more than it saves.
PARALLEL_FROM = 300

Built = OutgoingMail | CampaignError
# Whether the mails' bytes are wanted: always, never, or asked as each batch is handed out
# (a send's preflight wants them only while its spool has room).
Content = bool | Callable[[], bool]
# The mails that come back with their bytes and HTML whatever else is asked, by index: those
# the deliverability checks read (else the main process would build them again).
Whole = Callable[[int], bool]


@dataclass(frozen=True)
class MailFactory:
    """Builds one recipient's mail in this process: templates compiled, files read once."""

    campaign: Campaign
    renderer: Renderer
    builder: MessageBuilder

    @classmethod
    def load(cls, campaign: Campaign) -> MailFactory:
        """Compile every template and read every shared file; raise what is wrong."""
        attachments = Attachments.load(campaign, POLICY)
        renderer = Renderer.load(campaign)
        builder = MessageBuilder.load(campaign, attachments, renderer.template_files)
        return cls(campaign, renderer, builder)

    def build(
        self, index: int, recipient: Recipient, *, content: bool = True, html: bool = True
    ) -> Built:
        """The recipient's mail, or the problem that stops it. ``content=False``: without
        its ``data`` and ``html`` (``size`` stays), for a run that only counts;
        ``html=False``: without its ``html`` (only previews show it)."""
        try:
            mail = self.builder.build(index, recipient, self.renderer.render(recipient))
        except CampaignError as exc:
            return exc
        if not content:
            return replace(mail, data=b"", html="")
        return mail if html else replace(mail, html="")


_factory: MailFactory | None = None


def _start_worker(factory: MailFactory | Campaign, parent: int) -> None:
    """A worker's setup: a forked worker is handed the main process's factory, templates
    compiled and files read; elsewhere (no fork) it loads its own from the campaign."""
    global _factory
    # Ctrl-C, SIGTERM and SIGHUP to the process group reach the workers too: the main process
    # decides what to do, and ends them when it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # ``parent`` is the main process's pid as it made the pool, not os.getppid() now: if
    # it was killed while forking, this worker's parent is already init, which would
    # never change, and the worker would wait for tasks forever, holding its pipes open.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _factory = factory if isinstance(factory, MailFactory) else MailFactory.load(factory)


def _exit_with_parent(parent: int) -> None:
    """End this worker when the main process is gone (killed: it could not tell us)."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _build_batch(
    batch: list[tuple[int, Recipient]], content: bool, html: bool, whole: Whole | None
) -> list[Built]:
    # content=False: a check only counts, so the bytes are not shipped back through the pipe.
    assert _factory is not None
    return [_build(_factory, index, recipient, content, html, whole) for index, recipient in batch]


def _build(
    factory: MailFactory,
    index: int,
    recipient: Recipient,
    content: bool,
    html: bool,
    whole: Whole | None,
) -> Built:
    if whole is not None and whole(index):
        content = html = True
    return factory.build(index, recipient, content=content, html=html)


def _pool(workers: int, factory: MailFactory) -> ProcessPoolExecutor:
    """Worker processes that build with ``factory``: forked, they inherit it as it is (no
    template compiled or file read again, nothing pickled); where fork is missing, each
    loads its own from the campaign."""
    if "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")
        return ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(factory, os.getpid())
        )
    return ProcessPoolExecutor(
        workers, initializer=_start_worker, initargs=(factory.campaign, os.getpid())
    )


def default_workers(rows: int | None) -> int:
    """How many worker processes to use for a list of ``rows``: none for short lists."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if rows is not None and rows < PARALLEL_FROM:
        return 0
    return min(cores or 1, 4) if (cores or 1) > 1 else 0


def build_in_order(
    factory: MailFactory,
    items: Iterable[tuple[int, Recipient]],
    *,
    workers: int,
    content: Content = True,
    html: bool = True,
    whole: Whole | None = None,
) -> Iterator[tuple[Recipient, Built]]:
    """Each ``(index, recipient)`` with its built mail (or its problem), in input order.

    ``workers=0`` builds in this process with ``factory``. ``content=False`` leaves the
    mails' ``data`` and ``html`` empty (their ``size`` stays): enough for a check; a
    callable is asked for each batch. ``html=False`` leaves ``html`` empty. The mails
    whose index ``whole`` accepts (a module-level function) have both. The first
    ``WARM_UP`` mails are built in this process, the others by ``workers`` processes.
    """
    wanted = content if callable(content) else lambda: content
    if workers <= 0:
        for index, recipient in items:
            yield recipient, _build(factory, index, recipient, wanted(), html, whole)
        return
    iterator = iter(items)
    tasks = _TaskSize(factory)
    # The first mails are built here, before the workers are forked: they start with the
    # templates' skeletons made and checked against premailer (~80 ms of work each would
    # otherwise repeat), and a pass that selects nothing starts no process at all.
    for index, recipient in islice(iterator, WARM_UP):
        built = _build(factory, index, recipient, wanted(), html, whole)
        tasks.saw(built)
        yield recipient, built
    first = next(iterator, None)
    if first is None:
        return
    iterator = chain([first], iterator)
    # Forked workers share the main process's memory until they write to it; the cyclic
    # GC walking every object would make them copy it all. Frozen objects are left alone.
    gc.freeze()
    with _pool(workers, factory) as pool:
        pending: deque[tuple[list[tuple[int, Recipient]], Future[list[Built]]]] = deque()
        try:
            while True:
                while len(pending) < 2 * workers:
                    content_wanted = wanted()
                    size = tasks.with_content() if content_wanted else COUNTING_BATCH
                    batch = list(islice(iterator, size))
                    if not batch:
                        break
                    future = pool.submit(_build_batch, batch, content_wanted, html, whole)
                    pending.append((batch, future))
                if not pending:
                    return
                batch, future = pending.popleft()
                for (_, recipient), built in zip(batch, future.result(), strict=True):
                    tasks.saw(built)
                    yield recipient, built
        finally:
            for _, future in pending:
                future.cancel()
            gc.unfreeze()


class _TaskSize:
    """How many mails a task with their bytes holds: as many as keep it near
    `BATCH_BYTES` by the largest mail seen so far (from `BATCH` to `COUNTING_BATCH`), so
    small mails pay the per-task cost a quarter as often. With attachments chosen per
    recipient, whose sizes the first mails don't foretell, always `BATCH`."""

    def __init__(self, factory: MailFactory) -> None:
        templates = factory.renderer.templates.attachments
        self.uniform = not any(entry.path is not None for entry in templates)
        self.largest = 0

    def saw(self, built: Built) -> None:
        if isinstance(built, OutgoingMail):
            self.largest = max(self.largest, built.size + len(built.html))

    def with_content(self) -> int:
        if not self.uniform or not self.largest:
            return BATCH
        return max(BATCH, min(COUNTING_BATCH, BATCH_BYTES // self.largest))
