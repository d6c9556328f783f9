"""The work mark (core/work.py): set for a block, per thread, restored after."""

from __future__ import annotations

import threading

from core.work import WorkClass, current_work, work_for


def test_a_block_marks_its_work_and_the_mark_is_restored_after() -> None:
    assert current_work().work_class == WorkClass.INTERACTIVE and current_work().tenant == ""
    with work_for(tenant="acme", work_class=WorkClass.BULK):
        assert (current_work().tenant, current_work().work_class) == ("acme", WorkClass.BULK)
        with work_for(tenant="acme", work_class=WorkClass.INTERACTIVE):
            assert current_work().work_class == WorkClass.INTERACTIVE
        assert current_work().work_class == WorkClass.BULK
    assert current_work().tenant == ""


def test_each_thread_has_its_own_mark() -> None:
    seen: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        inside.wait(5)
        seen.append(current_work().tenant)  # not the main thread's mark
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with work_for(tenant="main", work_class=WorkClass.BULK):
        inside.set()
        release.wait(5)
    thread.join(5)
    assert seen == [""]
