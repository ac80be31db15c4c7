"""The local cluster's harness: what `up` does with node state it did not make."""

from __future__ import annotations

import pytest

from tests.cluster.harness.lifecycle import node_state_action

OURS = "/work/orchard/.cluster ca:0e5e76cdc6310217\n"
EARLIER = "/tmp/ci-clone/.cluster ca:3b1f0a9c2d4e5f60\n"


@pytest.mark.parametrize(
    ("owner", "mine_running", "found", "strays", "owner_checkout_exists", "action"),
    [
        (OURS, True, True, False, True, "keep"),
        (OURS, False, True, False, True, "keep"),  # stopped by a restart: its own again
        (None, False, False, False, False, "claim"),  # a fresh machine
        (None, True, True, False, False, "claim"),  # ours, started before OWNER existed
        (EARLIER, False, False, False, True, "claim"),  # the other's state already gone
        (None, False, True, False, False, "scrub"),  # left with no owner (a restart)
        (EARLIER, False, True, False, True, "scrub"),  # the other checkout's, stopped
        (EARLIER, False, True, True, False, "scrub"),  # running, but its checkout is gone
        (EARLIER, False, True, True, True, "refuse"),  # another checkout's cluster runs
        # Same directory, new CA (`rm -rf .cluster`): the old one's state is another's.
        (OURS.replace("0e5e", "ffff"), False, True, False, True, "scrub"),
    ],
)
def test_up_keeps_its_own_node_state_and_removes_an_earlier_clusters(
    owner: str | None,
    mine_running: bool,
    found: bool,
    strays: bool,
    owner_checkout_exists: bool,
    action: str,
) -> None:
    assert (
        node_state_action(
            owner,
            OURS,
            mine_running=mine_running,
            found=found,
            strays=strays,
            owner_checkout_exists=owner_checkout_exists,
        )
        == action
    )
