"""The classic ipyparallel example with four engines (also run by scripts/demo.sh)."""

import pytest

TRANSPORTS = [
    pytest.param("tcp"),
    pytest.param("ipc", marks=pytest.mark.herd_only("ipyparallel 7.1's own ipc mode is broken (spec Q14)")),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_classic_example_on_four_engines(cluster_factory, transport):
    rc = cluster_factory(engines=4, transport=transport).client
    assert sorted(rc.ids) == [0, 1, 2, 3]

    rc[:].push(dict(a=5, b=10), block=True)
    rc[::2].execute("c=a+b", block=True)
    rc[1::2].execute("c=a-b", block=True)

    assert rc[:]["c"] == [15, -5, 15, -5]
