"""The partial store's locks: one publisher at a time, a dead one's claim taken over, none after publishing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from magnet_cli.errors import OutputError
from magnet_cli.io.labels import LABELS_FORMAT
from magnet_cli.io.partial_store import PartialStore, fingerprint, is_in_use, partial_name


def lay_out_for(digest: str):
    def lay_out(folder: Path) -> None:
        (folder / ".zattrs").write_text(
            '{"magnet": {"format": "%s", "state": "partial", "fingerprint": "%s", "written": []}}' % (LABELS_FORMAT, digest)
        )

    return lay_out


@pytest.fixture
def digest() -> str:
    return fingerprint({"run": 1})


def hold_claim(path: Path, output: Path, digest: str, seconds: float) -> subprocess.Popen:
    """Another process that joins the store, claims publication and holds the claim for `seconds`."""
    script = (
        "import sys, time; from pathlib import Path; from magnet_cli.io.partial_store import PartialStore;"
        f"s = PartialStore(Path({str(path)!r}), Path({str(output)!r}), {digest!r}); s._lock(True);"
        "print(s.claim_publication(), flush=True); time.sleep(float(sys.argv[1]))"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "True"
    return process


def test_only_one_process_publishes_and_a_dead_claimers_claim_is_taken_over(tmp_path, digest):
    output = tmp_path / "o.zarr"
    store = PartialStore.open(output, digest, lay_out_for(digest), shared=True)
    other = hold_claim(store.path, output, digest, 60)
    try:
        assert not store.claim_publication()  # two finishing together: the other one publishes
    finally:
        other.kill()  # it dies before publishing
        other.wait()
    assert store.claim_publication()  # its claim is free: this one publishes
    os.rename(store.path, output)  # published
    late = PartialStore(partial_name(output, digest), output, digest)
    assert not late.claim_publication()  # a shard finishing after publication publishes nothing
    store.release()


def test_a_plain_run_is_alone_in_its_store_and_shards_share_one(tmp_path, digest):
    output = tmp_path / "o.zarr"
    first = PartialStore.open(output, digest, lay_out_for(digest), shared=False)
    assert is_in_use(first.path)
    with pytest.raises(OutputError, match="writing it now"):
        PartialStore.open(output, digest, lay_out_for(digest), shared=True)
    first.release()
    assert not is_in_use(first.path)
    shards = [PartialStore.open(output, digest, lay_out_for(digest), shared=True) for _ in range(2)]
    with pytest.raises(OutputError, match="writing it now"):
        PartialStore.open(output, digest, lay_out_for(digest), shared=False)
    for shard in shards:
        shard.release()


def test_a_store_of_another_run_is_never_joined(tmp_path, digest):
    output = tmp_path / "o.zarr"
    other = fingerprint({"run": 2})
    path = partial_name(output, digest)
    path.mkdir()
    lay_out_for(other)(path)  # a store whose marker names another run under this run's name
    with pytest.raises(OutputError, match="not this run's"):
        PartialStore.open(output, digest, lay_out_for(digest), shared=True)


def test_the_ledger_ignores_half_written_entries(tmp_path, digest):
    store = PartialStore.open(tmp_path / "o.zarr", digest, lay_out_for(digest), shared=False)
    store.record("L1-R0-1-C0-1", {"class_pixels": [1, 2]})
    (store.path / "ledger" / "L1-R1-2-C0-1.json").write_text('{"class_pix')  # torn by a crash
    assert store.finished() == {"L1-R0-1-C0-1": {"class_pixels": [1, 2]}}
    store.release()
