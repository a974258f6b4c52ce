"""The worker's consumer publishes its buffered task events for Flower in batches, at most
``EVENT_FLUSH_S`` late, and never leaves one behind (worker/consumer.py). Unit tests on a fake
event loop; the integration tests that read Flower (test_delivery_integration, test_console,
test_order_integration) run the real consumer."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from vine import promise

from worker.consumer import EVENT_FLUSH_S, Consumer


class Loop:
    """kombu's hub, as far as the consumer uses it: callbacks for the next round, and a timer."""

    def __init__(self) -> None:
        self.now = 0.0
        self.soon: list[Any] = []
        self.timers: list[tuple[float, Any]] = []

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Any) -> None:
        self.timers.append((self.now + delay, callback))

    def run_until(self, when: float) -> None:
        """Run what is due up to ``when`` (ready callbacks first, as the hub does each round)."""
        while True:
            while self.soon:
                self.soon.pop(0)()
            due = sorted((t for t in self.timers if t[0] <= when), key=lambda t: t[0])
            if not due:
                break
            self.timers.remove(due[0])
            self.now = due[0][0]
            due[0][1]()
        self.now = max(self.now, when)


class Dispatcher:
    """Celery's EventDispatcher's group buffer: events wait until ``flush`` publishes them.
    Records when each event was buffered and published (by the loop's clock)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.buffer: list[str] = []
        self.published: list[list[str]] = []
        self.sent_at: dict[str, float] = {}
        self.published_at: dict[str, float] = {}
        self.during_publish: Any = None

    def flush(self) -> None:
        batch = list(self.buffer)
        if batch:
            self.published.append(batch)
            for event in batch:
                self.published_at[event] = self.loop.now
            if self.during_publish is not None:  # another thread buffers meanwhile
                hook, self.during_publish = self.during_publish, None
                hook()
        del self.buffer[: len(batch)]


def consumer(loop: Loop, dispatcher: Dispatcher) -> Consumer:
    made = Consumer.__new__(Consumer)  # (Celery's constructor wants a whole worker)
    made.hub = loop
    made.event_dispatcher = dispatcher
    made._schedule_flush_promise = promise(made._schedule_flush)
    return made


def send(made: Consumer, dispatcher: Dispatcher, event: str) -> None:
    dispatcher.buffer.append(event)
    dispatcher.sent_at[event] = dispatcher.loop.now
    made.on_send_event_buffered()


def test_events_of_one_interval_go_in_one_publish_no_later_than_the_interval() -> None:
    loop = Loop()
    dispatcher = Dispatcher(loop)
    made = consumer(loop, dispatcher)
    for n in range(10):
        send(made, dispatcher, f"e{n}")
        loop.run_until(loop.now + EVENT_FLUSH_S / 20)
    assert dispatcher.published == []  # half the interval: nothing yet
    loop.run_until(EVENT_FLUSH_S)
    assert dispatcher.published == [[f"e{n}" for n in range(10)]]
    assert loop.timers == []  # nothing more scheduled while nothing is sent


def test_an_event_buffered_while_a_batch_is_published_gets_its_own() -> None:
    loop = Loop()
    dispatcher = Dispatcher(loop)
    made = consumer(loop, dispatcher)
    send(made, dispatcher, "first")
    dispatcher.during_publish = lambda: send(made, dispatcher, "second")
    loop.run_until(EVENT_FLUSH_S)
    loop.run_until(3 * EVENT_FLUSH_S)
    assert dispatcher.published == [["first"], ["second"]]
    assert dispatcher.buffer == []


def test_shutdown_publishes_what_is_buffered() -> None:
    loop = Loop()
    dispatcher = Dispatcher(loop)
    made = consumer(loop, dispatcher)
    send(made, dispatcher, "last")
    made.blueprint = type("Blueprint", (), {"shutdown": lambda self, c: None})()
    made.shutdown()
    assert dispatcher.published == [["last"]]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=1, allow_nan=False), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_every_event_is_published_once_in_order_within_the_interval(
    events: list[tuple[float, bool]],
) -> None:
    """Any timing of events, some buffered while a batch is being published: each is
    published exactly once, in the order buffered, at most EVENT_FLUSH_S after it was."""
    loop = Loop()
    dispatcher = Dispatcher(loop)
    made = consumer(loop, dispatcher)
    order: list[str] = []

    def buffered(event: str) -> None:
        order.append(event)
        send(made, dispatcher, event)

    for n, (gap, meanwhile) in enumerate(events):
        loop.run_until(loop.now + gap * EVENT_FLUSH_S * 3)
        if meanwhile:
            dispatcher.during_publish = lambda e=f"x{n}": buffered(e)
        buffered(f"e{n}")
    loop.run_until(loop.now + 10 * EVENT_FLUSH_S)
    dispatcher.during_publish = None
    loop.run_until(loop.now + 10 * EVENT_FLUSH_S)
    assert dispatcher.buffer == []
    assert [event for batch in dispatcher.published for event in batch] == order
    for event in order:
        assert dispatcher.published_at[event] - dispatcher.sent_at[event] <= EVENT_FLUSH_S + 1e-9
